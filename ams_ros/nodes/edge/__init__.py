"""The robot: camera_sampler, student_segmenter and model_patcher in one process (the edge executable)."""
