"""Candidate operations: the one definition of what each operation kind computes.

Every operation is an inverted-residual block with a linear bottleneck, as in NSE (Ci et al., ICCV 2021):
expand 1x1 (BN, ReLU), the middle conv(s) of its kind (each BN, ReLU), project 1x1 (BN, no
ReLU); no conv has a bias. `OpSpec.layers` lists those convolutions as `ConvLayer`s; the
PyTorch builder and the MACs/params counter both read that list, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwnas.errors import SpecError

KINDS = ("dw", "conv", "dual", "ssc")


@dataclass(frozen=True)
class ConvLayer:
    """One 2-d convolution of an operation, with what follows it."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: int = 1
    groups: int = 1
    bn: bool = True
    relu: bool = True
    bias: bool = False

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an input of h x w (PyTorch's formula)."""
        sizes = []
        for size, k, s, p in zip((h, w), self.kernel, self.stride, self.padding):
            sizes.append((size + 2 * p - self.dilation * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]


@dataclass(frozen=True)
class OpSpec:
    """A candidate operation of a search space (one entry of a space's `ops`)."""

    name: str
    kind: str
    kernel: int
    expand: int
    dilation: int = 1
    groups: tuple[int, int] = (1, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "kernel": self.kernel, "expand": self.expand,
                "dilation": self.dilation, "groups": list(self.groups)}

    def hidden(self, cin: int) -> int:
        return cin * self.expand

    def check_channels(self, cin: int, cout: int) -> None:
        """Grouped 1x1 convs need channel counts divisible by their groups."""
        g_in, g_out = self.groups
        hidden = self.hidden(cin)
        if cin % g_in or hidden % g_in or hidden % g_out or cout % g_out:
            raise SpecError(
                f"op {self.name}: groups {list(self.groups)} do not divide the channels "
                f"(cin {cin}, hidden {hidden}, cout {cout})"
            )

    def layers(self, cin: int, cout: int, stride: int) -> list[ConvLayer]:
        """The convolutions of this operation from cin to cout channels at this stride."""
        self.check_channels(cin, cout)
        g_in, g_out = self.groups
        h = self.hidden(cin)
        k, d, s = self.kernel, self.dilation, stride
        expand = ConvLayer(cin, h, (1, 1), groups=g_in)
        if self.kind == "dw":
            pad = d * (k - 1) // 2
            middle = [ConvLayer(h, h, (k, k), (s, s), (pad, pad), dilation=d, groups=h)]
        elif self.kind == "conv":
            middle = [ConvLayer(h, h, (3, 3), (s, s), (1, 1))]
        elif self.kind == "dual":
            middle = [ConvLayer(h, h, (3, 3), (1, 1), (1, 1)), ConvLayer(h, h, (3, 3), (s, s), (1, 1))]
        elif self.kind == "ssc":
            middle = [
                ConvLayer(h, h, (1, k), (1, s), (0, k // 2)),
                ConvLayer(h, h, (k, 1), (s, 1), (k // 2, 0)),
            ]
        else:  # from_dict rejects unknown kinds; reaching here is a bug
            raise AssertionError(f"unknown op kind {self.kind!r}")
        project = ConvLayer(h, cout, (1, 1), groups=g_out, relu=False)
        return [expand, *middle, project]


def _int_field(raw: dict[str, Any], field: str, where: str, default: int | None = None,
               low: int = 1, high: int | None = None) -> int:
    value = raw.get(field, default)
    if value is None:
        raise SpecError(f"{where}: missing field '{field}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{field}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise SpecError(f"{where}.{field}: must be {bound}, got {value}")
    return value


def op_from_dict(raw: Any, where: str) -> OpSpec:
    """Parse and validate one op entry of a space file."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object with kind/kernel/expand, got {raw!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    kernel = _int_field(raw, "kernel", where, high=31)
    if kernel % 2 == 0:
        raise SpecError(f"{where}.kernel: must be odd (same padding), got {kernel}")
    if kind in ("conv", "dual") and kernel != 3:
        raise SpecError(f"{where}.kernel: '{kind}' ops are 3x3, got {kernel}")
    expand = _int_field(raw, "expand", where, high=64)
    dilation = _int_field(raw, "dilation", where, default=1, high=8)
    if dilation != 1 and kind != "dw":
        raise SpecError(f"{where}.dilation: only 'dw' ops may be dilated, got {dilation}")
    groups_raw = raw.get("groups", [1, 1])
    if (not isinstance(groups_raw, list) or len(groups_raw) != 2
            or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in groups_raw)):
        raise SpecError(f"{where}.groups: expected [g_in, g_out] of positive integers, got {groups_raw!r}")
    groups = (groups_raw[0], groups_raw[1])
    if groups != (1, 1) and kind != "dw":
        raise SpecError(f"{where}.groups: only 'dw' ops have grouped 1x1 convs, got {groups_raw}")
    default_name = f"{kind}_k{kernel}_t{expand}" + (f"_d{dilation}" if dilation > 1 else "") + (
        f"_g{groups[0]}{groups[1]}" if groups != (1, 1) else "")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "@ \t\n"):
        raise SpecError(f"{where}.name: expected a non-empty name without spaces or '@', got {name!r}")
    return OpSpec(name, kind, kernel, expand, dilation, groups)
