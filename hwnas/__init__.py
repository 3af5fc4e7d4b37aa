"""hwnas: hardware-aware neural architecture search for GPUs.

Profiles the candidate operations of a search space into latency/MACs lookup tables,
prices architectures with them, and builds the searched networks in PyTorch.
"""

__version__ = "0.1.0"
