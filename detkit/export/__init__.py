"""ONNX export: `graph` (the test-time detector as one traceable function of a BGR uint8 image) and
`onnx_file` (writing it, with class names in the metadata, after an onnxruntime-vs-PyTorch check).
Used by tools/export.py and tools/benchmark.py --onnx; nothing in the library below it imports it."""
