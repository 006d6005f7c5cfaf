"""Several processes: data parallel (DDP), FSDP2 sharding, and the set-ups selection refuses."""
