"""Backbones: ResNet 18-152 and its C4 split (backbone/resnet.py)."""
