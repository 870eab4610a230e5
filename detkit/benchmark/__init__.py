"""Benchmarking: `timing` (per-stage inference and training iteration times, FLOPs, memory), `compare`
(detections equal up to numerical error), `random_weights` (download-free weights with realistic
activations), `torchvision_reference` (torchvision's FasterRCNN built as the same detector) and `onnx_timing`
(PyTorch against onnxruntime in turns). Used by tools/benchmark.py; `compare` also by detkit.export's self-check;
nothing below the engine/benchmark layer imports it."""
