"""Loading a network's state_dict, including one saved with positional layer names.

Before its layers were named for the math (expand/bn1/depthwise/bn2/project/bn3, stem.conv,
head.conv), an operation was a Sequential of (conv, BN) Sequentials, and its keys read
`branches.0.1.0.weight`. Such a checkpoint still loads: each positional name is mapped to the
named one (the layer order is fixed by the operation's kind), and every tensor is still
checked for shape by load_state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hwnas.model.blocks import Operation
from hwnas.model.stem_head import Head, Stem


def positional_names(net: nn.Module) -> dict[str, str]:
    """positional module prefix -> named module prefix, for every conv and BN of the network."""
    names: dict[str, str] = {}
    for prefix, module in net.named_modules():
        base = f"{prefix}." if prefix else ""
        if isinstance(module, Operation):
            for i, (conv, bn, _) in enumerate(module.steps()):
                names[f"{base}{i}.0."] = base + _child_name(module, conv) + "."
                names[f"{base}{i}.1."] = base + _child_name(module, bn) + "."
        elif isinstance(module, Stem):
            names[f"{base}0."], names[f"{base}1."] = f"{base}conv.", f"{base}bn."
        elif isinstance(module, Head):
            names[f"{base}conv.0."] = f"{base}conv."
    return names


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next(name for name, m in parent.named_children() if m is child)


def upgrade_state_dict(net: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state with positional names renamed to the network's; named keys are kept as they are."""
    names = positional_names(net)
    out = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        new = names.get(prefix + ".")
        out[f"{new}{param}" if new else key] = value
    return out
