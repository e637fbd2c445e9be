"""The base station for one robot: the labelled sample buffer, Algorithm 2 training, rate control, the session."""
