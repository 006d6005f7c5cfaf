"""Which tensors to train: importance, the DP under the FLOPs budget, the selection pipeline, the baseline schemes."""
