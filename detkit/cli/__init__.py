"""What the command-line scripts under demo/ share: model options and predictor choice, JSON lines, output paths."""
