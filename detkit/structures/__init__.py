"""Box structures: (N, 4) float tensors in xyxy; see boxes.py."""
