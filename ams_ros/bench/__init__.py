"""ams-bench: speed and size figures, one module per group (make bench)."""
