"""Writes tests/data/detectron2/state_shapes_R_{50,101}_C4.json: every state_dict name and shape of detectron2's
full-size COCO Faster R-CNN R50-C4 and R101-C4, as its own code builds them (no weights needed).

Run with a Python that imports detectron2 (never a detkit dependency), from the repository root:
    python tests/detectron2_reference/dump_state_shapes.py /path/to/detectron2/configs
detkit's tests read the JSON to check that configs/detectron2/*.yaml build models that take those tensors.
"""

import json
import sys
from pathlib import Path

from detectron2.config import get_cfg
from detectron2.modeling import build_model

OUT = Path(__file__).resolve().parents[1] / "data" / "detectron2"
MODELS = {"R_50_C4": "faster_rcnn_R_50_C4_1x", "R_101_C4": "faster_rcnn_R_101_C4_3x"}


def main(configs: Path) -> None:
    for short, name in MODELS.items():
        cfg = get_cfg()
        cfg.merge_from_file(str(configs / "COCO-Detection" / f"{name}.yaml"))
        cfg.MODEL.DEVICE = "cpu"
        state = build_model(cfg).state_dict()
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        (OUT / f"state_shapes_{short}.json").write_text("{\n" + lines + "\n}\n")
        print(f"{short}: {len(state)} tensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
