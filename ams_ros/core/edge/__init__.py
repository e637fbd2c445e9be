"""The robot side: sampling frames, inference, the double-buffered model, following the update chain."""
