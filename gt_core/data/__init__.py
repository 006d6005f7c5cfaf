"""Training data: datasets and prompts, the embedded task, a run's train/validation split, tokenizers."""
