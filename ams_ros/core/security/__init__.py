"""Who may say what: Ed25519 signatures on updates, frame batches and snapshot requests."""
