"""The evaluation report of tools/analyze.py: `figures` (matplotlib PNGs), `gallery` (images with
their errors drawn by detkit.visualize), `html` (the static index.html). The numbers come from
detkit.evaluation; detkit.engine.analyze puts the pieces together."""
