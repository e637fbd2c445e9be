"""ams-keys: make and inspect the Ed25519 keys of a base station and its robots."""
