"""PyTorch reference modules built from hwnas specs."""

from hwnas.model.blocks import MultiBranchCell, Operation, cell_mean, cell_terms
from hwnas.model.network import Network, build_cell, build_network
from hwnas.model.stem_head import Head, Stem

__all__ = ["Head", "MultiBranchCell", "Network", "Operation", "Stem", "build_cell", "build_network", "cell_mean",
           "cell_terms"]
