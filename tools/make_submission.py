"""Make a COCO leaderboard submission from a saved detections file:

    python tools/make_submission.py --results output/x/detections.json \
        --image-info image_info_test-dev2017.json --split test-dev2017 --method detkit-r101 [--output-dir DIR]

Writes DIR/detections_<split>_<method>_results.json and the .zip to upload (default DIR: the
results file's folder). Refuses, listing every problem, when the file is not a valid submission.
"""

from detkit.engine.setup import ArgumentParser, user_errors_exit
from detkit.evaluation.submission import make_submission


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Check a detections file and package it for the COCO evaluation server.")
    parser.add_argument("--results", required=True, help="detections.json written by tools/test_net.py")
    parser.add_argument(
        "--image-info", required=True, help="the split's image-info json, e.g. image_info_test-dev2017.json"
    )
    parser.add_argument("--split", required=True, help="the split's name in the file name, e.g. test-dev2017")
    parser.add_argument("--method", required=True, help="your method's name in the file name, e.g. detkit-r101")
    parser.add_argument("--output-dir", help="where the json and zip go (default: beside --results)")
    parser.add_argument(
        "--subset",
        action="store_true",
        help="drop detections on images the image-info file lacks (e.g. a test2017 run submitted as test-dev2017)",
    )
    args = parser.parse_args()

    json_path, zip_path, notes = make_submission(
        args.results,
        args.image_info,
        split=args.split,
        method=args.method,
        output_dir=args.output_dir,
        subset=args.subset,
    )
    for line in notes:
        print(line)
    print(f"wrote {json_path}")
    print(f"upload {zip_path}")


if __name__ == "__main__":
    main()
