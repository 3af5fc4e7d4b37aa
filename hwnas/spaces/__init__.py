"""Search spaces, macro-architectures, architectures and where they come from."""

from hwnas.spaces.arch import Architecture, Cell, PlacedCell, Space
from hwnas.spaces.catalog import builtin, load_file, resolve_architecture, resolve_macro, resolve_space
from hwnas.spaces.macro import Macro, Position, Slot, make_divisible
from hwnas.spaces.ops import ConvLayer, OpSpec

__all__ = ["Architecture", "Cell", "ConvLayer", "Macro", "OpSpec", "PlacedCell", "Position", "Slot",
           "Space", "builtin", "load_file", "make_divisible", "resolve_architecture", "resolve_macro",
           "resolve_space"]
