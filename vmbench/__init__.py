"""vmbench: train, evaluate and benchmark vision backbones; results in SQL."""
__version__ = "0.1.0"
