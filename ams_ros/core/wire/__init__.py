"""The wire formats between robot and base station: frame batches (video) and model updates."""
