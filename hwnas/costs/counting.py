"""MACs and parameters, counted analytically from the layer definitions.

Convention (the one of torch.utils.flop_counter, halved): MACs are the multiply-accumulates
of convolutions and the FC layer, for ONE image; a conv computes
out_h * out_w * cout * (cin / groups) * kh * kw MACs, the FC in * out. BN, ReLU, the cell's
mean and identity adds, the pooling and the biases are not counted. Params are every trainable
tensor: conv weights (and the head conv's bias), BN's weight and bias (not its running
statistics, which are buffers), FC weight and bias.

Traffic is the number of tensor elements an inference graph moves for one image: every conv
(and the FC) reads its input and parameters and writes its output once, BN and ReLU fused into
it as inference runtimes fuse them. It is a rough measure of memory-bound time, for models of
latency (hwnas.profiling.transfer), not a count of cache misses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hwnas.spaces.arch import Architecture, PlacedCell, Space
from hwnas.spaces.macro import Macro, Position
from hwnas.spaces.ops import ConvLayer, OpSpec


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    params: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)

    @staticmethod
    def total(costs: Iterable[Cost]) -> Cost:
        out = Cost()
        for c in costs:
            out = out + c
        return out


def layers_cost(layers: Iterable[ConvLayer], h: int, w: int) -> tuple[Cost, int, int]:
    """Cost of a chain of convs on an h x w input, and the output size."""
    total = Cost()
    for layer in layers:
        h, w = layer.out_size(h, w)
        kh, kw = layer.kernel
        weights = layer.cout * (layer.cin // layer.groups) * kh * kw
        params = weights + (2 * layer.cout if layer.bn else 0) + (layer.cout if layer.bias else 0)
        total = total + Cost(h * w * weights, params)
    return total, h, w


def layers_traffic(layers: Iterable[ConvLayer], h: int, w: int) -> int:
    """Elements read and written by a chain of convs on an h x w input, for one image."""
    total = 0
    for layer in layers:
        oh, ow = layer.out_size(h, w)
        kh, kw = layer.kernel
        weights = layer.cout * (layer.cin // layer.groups) * kh * kw + (layer.cout if layer.bias else 0)
        total += layer.cin * h * w + weights + layer.cout * oh * ow
        h, w = oh, ow
    return total


def op_traffic(op: OpSpec, pos: Position) -> int:
    return layers_traffic(op.layers(pos.cin, pos.cout, pos.stride), pos.resolution, pos.resolution)


def stem_traffic(macro: Macro) -> int:
    return layers_traffic([macro.stem_layer()], macro.input, macro.input)


def head_traffic(macro: Macro, scale: float) -> int:
    res = macro.final_resolution(scale)
    fc = macro.head_channels + macro.head_channels * macro.classes + 2 * macro.classes  # input, weights, bias, output
    return layers_traffic([macro.head_layer(scale)], res, res) + fc


def op_cost(op: OpSpec, pos: Position) -> Cost:
    cost, _, _ = layers_cost(op.layers(pos.cin, pos.cout, pos.stride), pos.resolution, pos.resolution)
    return cost


def stem_cost(macro: Macro) -> Cost:
    cost, _, _ = layers_cost([macro.stem_layer()], macro.input, macro.input)
    return cost


def head_cost(macro: Macro, scale: float) -> Cost:
    res = macro.final_resolution(scale)
    conv, _, _ = layers_cost([macro.head_layer(scale)], res, res)
    fc = Cost(macro.head_channels * macro.classes, macro.head_channels * macro.classes + macro.classes)
    return conv + fc


def cell_cost(space: Space, placed: PlacedCell) -> Cost:
    """A cell's branch combination: its branches' costs add up (merge adds are not MACs)."""
    return Cost.total(op_cost(space.ops[i], placed.slot.position) for i in placed.ops)


@dataclass(frozen=True)
class NetworkCost:
    stem: Cost
    cells: tuple[Cost, ...]  # one per placed cell (empty normal cells cost nothing)
    head: Cost

    @property
    def total(self) -> Cost:
        return self.stem + Cost.total(self.cells) + self.head


def network_cost(arch: Architecture) -> NetworkCost:
    """MACs and params per image of an architecture's stem, cells and head (no table needed)."""
    return NetworkCost(stem_cost(arch.macro), tuple(cell_cost(arch.space, pc) for pc in arch.placed),
                       head_cost(arch.macro, arch.scale))
