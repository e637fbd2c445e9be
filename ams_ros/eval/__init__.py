"""ams-eval: the paper's comparisons on real footage (issue 5; not implemented yet)."""
