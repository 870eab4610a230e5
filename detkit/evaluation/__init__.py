"""Evaluation: `coco` (pycocotools), `voc` (the PASCAL VOC rule), `results` (detections.json files).

Evaluators share `reset()`, `process(targets, outputs)`, `evaluate() -> dict` (percent values).
"""
