"""Re-parameterisation of a network for inference: same function, fewer nodes.

Each multi-branch cell becomes, with every BN folded into the conv before it:
- the depthwise branches with ungrouped 1x1s, merged into chains of ONE expand conv
  (concatenated weights) + ReLU, ONE depthwise conv + ReLU, and ONE projection conv whose
  weights carry the mean's 1/n: all in one chain with kernels zero-padded (and dilated) to
  the largest effective size (`padded`), one chain per (kernel, dilation) (`grouped`), or
  padded only when padding costs little (`auto`, the default);
- other branches (dense, dual, spatially separable, grouped 1x1s) kept, with 1/n folded
  into their last conv;
- the identity of a normal cell as an add of x / n.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hwnas.model.blocks import cell_terms, is_fusable_depthwise
from hwnas.model.network import Network

MERGES = ("auto", "padded", "grouped")


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    """conv followed by eval-mode BN, as one conv with a bias."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=w.dtype)
    if bn is not None:
        stats: Any = bn  # running_mean/var are Optional in torch's stubs; BN here always tracks them
        scale = bn.weight.detach() / torch.sqrt(stats.running_var + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = (b - stats.running_mean) * scale + bn.bias.detach()
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, bias=True)  # type: ignore[arg-type]
    out.weight.data.copy_(w)
    out.bias.data.copy_(b)  # type: ignore[union-attr]
    return out


def _effective(conv: nn.Conv2d) -> int:
    return conv.dilation[0] * (conv.kernel_size[0] - 1) + 1


def padded_depthwise(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """One depthwise conv: every kernel zero-padded (and dilated) to the largest effective size."""
    size = max(_effective(c) for c in convs)
    channels = sum(c.out_channels for c in convs)
    out = nn.Conv2d(channels, channels, size, convs[0].stride, size // 2, groups=channels, bias=True)  # type: ignore[arg-type]
    weight = torch.zeros(channels, 1, size, size)
    start = 0
    for c in convs:
        k, d, e = c.kernel_size[0], c.dilation[0], _effective(c)
        off = (size - e) // 2
        weight[start:start + c.out_channels, :, off:off + e:d, off:off + e:d].copy_(c.weight.detach())
        start += c.out_channels
    out.weight.data.copy_(weight)
    out.bias.data.copy_(torch.cat([c.bias.detach() for c in convs]))  # type: ignore[union-attr,misc]
    return out


class MergedDepthwiseBranches(nn.Module):
    """Several depthwise branches as one: expand (concatenated), depthwise (padded), project
    (concatenated inputs, the mean's 1/terms folded in)."""

    def __init__(self, branches: list[Any], terms: int):
        super().__init__()
        expands = [fold_bn(b.expand, b.bn1) for b in branches]
        self.expand = nn.Conv2d(expands[0].in_channels, sum(e.out_channels for e in expands), 1, bias=True)
        self.expand.weight.data.copy_(torch.cat([e.weight.detach() for e in expands]))
        self.expand.bias.data.copy_(torch.cat([e.bias.detach() for e in expands]))  # type: ignore[union-attr,misc]
        self.depthwise = padded_depthwise([fold_bn(b.depthwise, b.bn2) for b in branches])
        projects = [fold_bn(b.project, b.bn3) for b in branches]
        self.project = nn.Conv2d(sum(p.in_channels for p in projects), projects[0].out_channels, 1, bias=True)
        self.project.weight.data.copy_(torch.cat([p.weight.detach() for p in projects], 1) / terms)
        self.project.bias.data.copy_(torch.stack([p.bias.detach() for p in projects]).sum(0) / terms)  # type: ignore[union-attr,misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.depthwise(torch.relu(self.expand(x)))))


def depthwise_groups(branches: list[Any], merge: str) -> list[list[Any]]:
    """Which fused branches share one merged chain.

    padded: all of them (kernels zero-padded to the largest); grouped: one chain per
    (kernel, dilation), no padding; auto: padded unless padding adds more than 25% to the
    depthwise MACs, else grouped (measured on ORT CPU: the padded MACs cost more than the
    launches they save once kernels differ much).
    """
    if not branches:
        return []
    by_kernel: dict[tuple[int, int], list[Any]] = {}
    for b in branches:
        conv = b.depthwise
        by_kernel.setdefault((conv.kernel_size[0], conv.dilation[0]), []).append(b)
    if merge == "grouped":
        return list(by_kernel.values())
    if merge == "auto":
        size = max(_effective(b.depthwise) for b in branches)
        exact = sum(b.depthwise.out_channels * b.depthwise.kernel_size[0] ** 2 for b in branches)
        padded = sum(b.depthwise.out_channels for b in branches) * size ** 2
        if padded > 1.25 * exact:
            return list(by_kernel.values())
    return [branches]


class ReparamCell(nn.Module):
    def __init__(self, cell: Any, merge: str = "auto"):
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        terms = cell_terms(len(cell.branches), cell.identity)
        self.identity_scale = 1.0 / terms if cell.identity else 0.0
        fused = [b for b in cell.branches if is_fusable_depthwise(b)]
        self.merged = nn.ModuleList(MergedDepthwiseBranches(g, terms) for g in depthwise_groups(fused, merge))
        others = []
        for b in cell.branches:
            if is_fusable_depthwise(b):
                continue
            layers: list[nn.Module] = []
            for conv, bn, relu in b.steps():
                layers.append(fold_bn(conv, bn))
                if relu:
                    layers.append(nn.ReLU())
            last: Any = layers[-1]  # the projection: the mean's 1/n is folded into it
            last.weight.data /= terms
            last.bias.data /= terms
            others.append(nn.Sequential(*layers))
        self.others = nn.ModuleList(others)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for branch in [*self.merged, *self.others]:
            y = branch(x)
            out = y if out is None else out + y
        assert out is not None
        if self.identity_scale:
            out = out + x * self.identity_scale
        return out


@torch.no_grad()
def reparameterize(net: Network, merge: str = "auto") -> nn.Module:
    """An inference-only copy of the network (eval-mode BN folded) with re-parameterised cells."""
    net = copy.deepcopy(net).eval()
    stem = nn.Sequential(fold_bn(net.stem.conv, net.stem.bn), nn.ReLU())
    cells = nn.Sequential(*(ReparamCell(c, merge) if c.branches else nn.Identity()  # type: ignore[union-attr]
                            for c in net.cells))
    return nn.Sequential(stem, cells, net.head).eval()
