"""Many robots on a base station: GPU scheduling, fused training, the Ray pool of actors, the backends."""
