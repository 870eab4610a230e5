"""Reading and writing weights: detkit checkpoints (`io`), below `modeling` so that any layer may load them."""
