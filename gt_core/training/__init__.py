"""The training recipe and its parts: trainer, callbacks, checkpoints, precision, device, frozen optimizer state, memory, records and trackers."""
