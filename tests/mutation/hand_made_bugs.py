"""Hand-made bugs that must fail the default suite (issue 20): each is applied alone to a copy of the
repository and the test files named for it are run there; a bug whose tests still pass SURVIVED.

    python tests/mutation/hand_made_bugs.py            # all bugs
    python tests/mutation/hand_made_bugs.py voting_off # some of them, by name

Prints KILLED / SURVIVED per bug; exits 1 if any bug survived or if a snippet is not found exactly once in
its file (the script must not silently test nothing). Not collected by pytest (not named test_*.py); the
tests it runs are default-suite ones (no `slow` mark). See docs/mutation.md.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
COPIED = ["detkit", "tests", "configs", "tools", "pyproject.toml"]
TARGETS = "tests/test_training_targets.py"
GEOMETRY = "tests/test_inference_geometry.py"


class Bug(NamedTuple):
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # default-suite test files that must fail with the bug


BUGS = [
    Bug("roi_box_loss_class0_deltas", "detkit/modeling/roi_heads.py",
        "pred = deltas.view(deltas.shape[0], -1, 4)[fg, labels[fg]]",
        "pred = deltas.view(deltas.shape[0], -1, 4)[fg, 0]", (TARGETS,)),
    Bug("roi_box_loss_over_foreground_count", "detkit/modeling/roi_heads.py",
        "self.smooth_l1_beta) / max(labels.numel(), 1)",
        "self.smooth_l1_beta) / max(fg.numel(), 1)", (TARGETS,)),
    Bug("roi_positive_fraction_ignored", "detkit/modeling/roi_heads.py",
        "            positive_fraction=c.positive_fraction,\n            smooth_l1_beta=c.smooth_l1_beta,\n",
        "            smooth_l1_beta=c.smooth_l1_beta,\n", (TARGETS,)),
    Bug("boxes_shrunk_3pct_when_mapped_back", "detkit/modeling/detector.py",
        'det = {**det, "boxes": det["boxes"] * scale}',
        'det = {**det, "boxes": det["boxes"] * scale * 0.97}', (GEOMETRY,)),
    Bug("global_context_box_w_h_swapped", "detkit/modeling/roi_heads.py",
        "whole = [torch.tensor([[0.0, 0.0, w, h]], device=feature.device) for h, w in image_sizes]",
        "whole = [torch.tensor([[0.0, 0.0, h, w]], device=feature.device) for h, w in image_sizes]", (GEOMETRY,)),
    Bug("global_context_of_image_0_for_all", "detkit/modeling/roi_heads.py",
        "whole = [torch.tensor([[0.0, 0.0, w, h]], device=feature.device) for h, w in image_sizes]",
        "whole = [torch.tensor([[0.0, 0.0, w, h]], device=feature.device) for h, w in image_sizes[:1] * len(image_sizes)]",
        (GEOMETRY,)),
    Bug("rpn_pre_nms_topk_train_test_swapped", "detkit/modeling/rpn.py",
        "pre_topk = self.pre_nms_topk[0 if self.training else 1]",
        "pre_topk = self.pre_nms_topk[1 if self.training else 0]", (TARGETS,)),
    Bug("rpn_positive_above_not_at_0.7", "detkit/modeling/matcher.py",
        "labels[best_iou >= threshold] = label",  # strict for the foreground band only
        "labels[(best_iou > threshold) | ((best_iou == threshold) & (label != 1))] = label",
        (TARGETS, "tests/test_matcher_sampler.py")),
    Bug("rpn_without_low_quality_matches", "detkit/modeling/rpn.py",
        "allow_low_quality_matches=True",
        "allow_low_quality_matches=False", (TARGETS,)),
    Bug("refinement_second_pass_off", "detkit/modeling/roi_heads.py",
        "scores2, boxes2 = rescore(refined_inputs)",
        "scores2, boxes2 = scores, boxes", (GEOMETRY,)),
    Bug("voting_off", "detkit/modeling/roi_heads.py",
        "results.append(self.postprocess_with_voting(s, b, size, self.refine_nms_thresh))",
        "results.append(self.postprocess(s, b, size, self.refine_nms_thresh))", (GEOMETRY,)),
    Bug("weight_decay_norm_to_non_norm_parameters", "detkit/engine/train.py",
        'groups = [{"params": other_params, "weight_decay": solver.weight_decay}]',
        'groups = [{"params": other_params, "weight_decay": solver.weight_decay_norm}]', (TARGETS,)),
]


def copy_repository(destination: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "mutants"))
        else:
            shutil.copy2(source, destination / name)


def apply(bug: Bug, root: Path) -> str | None:
    """Apply `bug` in the copy at `root`; returns an error line when its snippet is not there exactly once."""
    path = root / bug.file
    text = path.read_text()
    count = text.count(bug.old)
    if count != 1:
        return f"snippet found {count} times in {bug.file} (expected once): {bug.old!r}"
    path.write_text(text.replace(bug.old, bug.new))
    return None


def run_tests(tests: list[str], root: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main(names: list[str]) -> int:
    unknown = set(names) - {b.name for b in BUGS}
    if unknown:
        print(f"error: unknown bug names {sorted(unknown)}; known: {[b.name for b in BUGS]}", file=sys.stderr)
        return 2
    bugs = [b for b in BUGS if not names or b.name in names]
    # Without a bug the same tests must pass in the copy, or every "KILLED" below would mean nothing.
    baseline = sorted({t for b in bugs for t in b.tests})
    with tempfile.TemporaryDirectory(prefix="detkit-bug-") as tmp:
        copy_repository(Path(tmp))
        if run_tests(baseline, Path(tmp)) != 0:
            print(f"error: {baseline} fail on an unmodified copy; fix that first", file=sys.stderr)
            return 1
    print(f"baseline     unmodified copy passes {baseline}", flush=True)
    failures = 0
    for bug in bugs:
        with tempfile.TemporaryDirectory(prefix="detkit-bug-") as tmp:
            root = Path(tmp)
            copy_repository(root)
            error = apply(bug, root)
            if error:
                print(f"NOT APPLIED  {bug.name}: {error}", flush=True)
                failures += 1
                continue
            start = time.perf_counter()
            rc = run_tests(list(bug.tests), root)
            seconds = time.perf_counter() - start
        # pytest: 1 tests failed (killed), 0 all passed (survived); anything else is an error, not a kill
        verdict = {0: "SURVIVED", 1: "KILLED"}.get(rc, f"ERROR (pytest exit {rc})")
        failures += verdict != "KILLED"
        print(f"{verdict:<12} {bug.name}  [{', '.join(bug.tests)}]  {seconds:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
