"""make fuzz: a seeded fuzzer over updates, frame batches and images, through the code the nodes run."""
