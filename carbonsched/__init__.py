"""carbonsched: turns grid carbon intensity and power into a FLOPs budget ρ for training jobs."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
