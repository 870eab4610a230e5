"""Detections as the demos' JSON lines: one JSON object per frame or image, its detections as plain lists."""

import numpy as np

from detkit.visualize import class_name


def detections_to_json(out: dict[str, np.ndarray], class_names: list[str], score_threshold: float) -> list[dict]:
    """Predictor output -> [{"box": [x0, y0, x1, y1], "score", "label", "name"}] for scores >= threshold."""
    return [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
         "name": class_name(int(label), class_names)}
        for box, score, label in zip(out["boxes"], out["scores"], out["labels"])
        if score >= score_threshold
    ]
