"""Benchmarking: `timing` (per-stage inference and training iteration times, FLOPs, memory), `compare`
(detections equal up to numerical error), `random_weights` (download-free weights with realistic
activations) and `torchvision_reference` (torchvision's FasterRCNN built as the same detector).
Used by tools/benchmark.py; nothing in the library imports it."""
