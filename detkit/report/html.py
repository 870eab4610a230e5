"""The report's `index.html`: one static page (inline CSS, no script, no web font) that shows the
figures and tables of `analysis.json` and links the files beside it by relative paths."""

import html
import json

CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
.gallery figure { display: inline-block; width: 48%; vertical-align: top; margin: 0.5em 0.5%; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.note { font-size: 0.85em; color: #555; } pre { font-size: 0.8em; background: #f7f7f7; padding: 0.5em; }
"""

MAX_TABLE_CLASSES = 26  # larger confusion matrices are left to analysis.json
PER_CLASS_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "num_gt", "num_det")


def _e(value) -> str:
    return html.escape(str(value))


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else _e(value)


def _figure(file: str, caption: str) -> str:
    return f'<figure><img src="{_e(file)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + f'<td class="name">{_e(r[0])}</td>' + "".join(f"<td>{_number(v)}</td>" for v in r[1:]) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(analysis: dict, metrics: dict, provenance: dict | None) -> str:
    shown = [(k, v) for k, v in metrics.items() if not isinstance(v, dict)]
    parts = [
        "<h2>Summary</h2>",
        f"<p>{_e(analysis['num_images'])} images, {_e(analysis['num_detections'])} detections, "
        f"{_e(len(analysis['per_class']))} classes; ground truth: {_e(analysis['dataset'])}.</p>",
        _table(["", *(k for k, _ in shown)], [["metrics.json"] + [v for _, v in shown]]),
        '<p class="note">Percent. <a href="metrics.json">metrics.json</a> is what tools/evaluate.py writes '
        "(VOC sets: the VOC rule); <a href=\"analysis.json\">analysis.json</a> holds every number of this page.</p>",
    ]
    if provenance:
        parts.append("<p>Provenance of the results (their <code>.meta.json</code>):</p>")
        parts.append(f"<pre>{_e(json.dumps(provenance, indent=2, default=str))}</pre>")
    return "\n".join(parts)


def _per_class(analysis: dict, figures: dict) -> str:
    rows = [[name] + [row[c] for c in PER_CLASS_COLUMNS] for name, row in analysis["per_class"].items()]
    rows.sort(key=lambda r: (r[1] is None, -(r[1] or 0.0)))
    return "\n".join(
        [
            "<h2>Per class</h2>",
            '<div class="row">',
            _figure(figures["per_class"], "AP per class (bars), AP50 (ticks), sorted by AP"),
            _table(["class", *PER_CLASS_COLUMNS], rows),
            "</div>",
            '<p class="note">COCOeval (pycocotools) values, percent; num_gt: non-crowd ground-truth boxes, '
            "num_det: detections; '-': no ground truth.</p>",
        ]
    )


def _errors(analysis: dict, figures: dict) -> str:
    errors = analysis["errors"]
    keys = list(errors["overall"])
    rows = [["all classes"] + [errors["overall"][k] for k in keys]]
    rows += [[name] + [v[k] for k in keys] for name, v in errors["per_class"].items()]
    return "\n".join(
        [
            "<h2>Error breakdown</h2>",
            '<p class="note">As the COCO analysis tool: each curve ignores one more kind of error. C75/C50: '
            "IoU .75/.50; Loc: IoU .10 (localisation errors ignored); Sim: confusions within a supercategory "
            "ignored; Oth: all class confusions ignored; BG: background false positives ignored; FN: misses "
            "ignored. The gap between two curves is what that kind of error costs.</p>",
            '<div class="row">',
            _figure(figures["errors"], "error breakdown, all classes (AP of each curve in brackets)"),
            _table(["AP (%)", *keys], rows),
            "</div>",
            _figure(figures["errors_per_class"], "error breakdown per class"),
        ]
    )


def _confusion(analysis: dict, figures: dict) -> str:
    c = analysis["confusion"]
    rows = [[name] + list(row) for name, row in zip(c["classes"], c["matrix"])]
    counts = (
        _table(["truth \\ predicted", *c["classes"]], rows)
        if len(rows) <= MAX_TABLE_CLASSES
        else f"<p>{len(rows)} rows: the counts are in analysis.json (confusion.matrix).</p>"
    )
    return "\n".join(
        [
            "<h2>Confusion matrix</h2>",
            _figure(figures["confusion"], "confusion matrix, rows normalised"),
            '<p class="note">Rows: ground-truth class (background: detections on nothing, duplicates '
            "included); columns: predicted class (background: boxes no detection found). Counts:</p>",
            counts,
            _table(["", *c["classes"][:-1]], [["duplicates (in the background row)", *c["duplicates"]]]),
        ]
    )


def _gallery(analysis: dict) -> str:
    entries = analysis["gallery"]
    if not entries:
        return "<h2>Gallery</h2><p>No image has a false positive or a miss at this threshold.</p>"
    parts = [
        "<h2>Gallery</h2>",
        '<p class="note">The images with the most errors at the score threshold. Left: ground truth (TP found, '
        "FN missed, FN-class found with the wrong class); right: detections (TP, FP on nothing, FP-class "
        "wrong class, FP-dup duplicate, ignored on a crowd region).</p>",
    ]
    parts.append('<div class="gallery">')
    for e in entries:
        caption = f"image {e['image_id']}: {e['false_positives']} false positive(s), {e['missed']} missed"
        parts.append(_figure(e["file"], caption))
    parts.append("</div>")
    return "\n".join(parts)


def _sizes(analysis: dict, figures: dict) -> str:
    s = analysis["sizes"]
    keys = [k for k in ("num_gt", "AP", "AP50", "recall50", "recall_at_threshold") if k in s]
    rows = [[k] + list(s[k]) for k in keys]
    return "\n".join(
        [
            "<h2>Object size</h2>",
            _figure(figures["sizes"], "AP and recall by sqrt(area) of the ground-truth box"),
            _table(["sqrt(area), px", *s["bins"]], rows),
            '<p class="note">Bins are COCOeval area ranges (as small/medium/large, finer). recall50: highest '
            "recall at IoU .5 with 100 detections per image; recall_at_threshold: boxes found with their class "
            "at IoU .5 by detections above the score threshold.</p>",
        ]
    )


def _pr(figures: dict, score_threshold: float) -> str:
    return "\n".join(
        [
            "<h2>Precision-recall curves</h2>",
            f'<p class="note">COCOeval\'s interpolated precision at 101 recall points; markers: the last point '
            f"reached by detections scoring &gt;= {score_threshold:g} (circle IoU .5, square IoU .75).</p>",
            _figure(figures["pr"], "precision-recall, mean over classes"),
            _figure(figures["pr_per_class"], "precision-recall per class"),
        ]
    )


def render_index(analysis: dict, metrics: dict, provenance: dict | None, figures: dict) -> str:
    """The page; `figures` maps "per_class", "pr", "pr_per_class", "errors", "errors_per_class",
    "confusion", "sizes" to PNG paths relative to the page."""
    title = f"detkit report: {analysis['results']}"
    body = [
        f"<h1>{_e(title)}</h1>",
        _summary(analysis, metrics, provenance),
        _per_class(analysis, figures),
        _pr(figures, analysis["score_threshold"]),
        _errors(analysis, figures),
        _confusion(analysis, figures),
        _sizes(analysis, figures),
        _gallery(analysis),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
