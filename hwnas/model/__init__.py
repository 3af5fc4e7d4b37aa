"""PyTorch reference modules built from hwnas specs."""

from hwnas.model.blocks import Head, MultiBranchCell, Operation, conv_block
from hwnas.model.network import Network, build_cell, build_network

__all__ = ["Head", "MultiBranchCell", "Network", "Operation", "build_cell", "build_network", "conv_block"]
