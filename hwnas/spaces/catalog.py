"""Where spaces, macro-architectures and architectures come from: the built-ins or a file.

A file has the schema of the built-in `hwnas/data/nse.json`: any of the top-level keys
`spaces`, `macro`, `networks`. Its networks may use its own spaces and macros or the
built-ins. A file holding just one network object (with `cells`) is accepted too.
Wherever the CLI takes a NAME it also takes FILE, or FILE:NAME for a file with several.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError, SpecError, require
from hwnas.spaces.arch import Architecture, Space, architecture_from_dict, space_from_dict
from hwnas.spaces.macro import Macro, macro_from_dict

TOP_KEYS = ("about", "spaces", "macro", "networks")


@dataclass
class Catalog:
    spaces: dict[str, Space] = field(default_factory=dict)
    macros: dict[str, Macro] = field(default_factory=dict)
    networks: dict[str, Architecture] = field(default_factory=dict)
    own: dict[str, set[str]] = field(default_factory=dict)  # names the document itself defines, by attr


def _names(kind: str, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}.{kind}: expected an object mapping names to definitions")
    return raw


def catalog_from_dict(raw: Any, where: str, base: Catalog | None = None) -> Catalog:
    """Parse a whole document; names not defined in it are looked up in `base`."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a JSON/YAML object at the top level")
    if "cells" in raw:  # a bare network
        raw = {"networks": {Path(where).stem: raw}}
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                        f"expected {', '.join(TOP_KEYS[1:])}")
    cat = Catalog(dict(base.spaces) if base else {}, dict(base.macros) if base else {})
    for name, sp in _names("spaces", raw.get("spaces"), where).items():
        cat.spaces[name] = space_from_dict(name, sp, f"{where}: spaces.{name}")
    for name, mc in _names("macro", raw.get("macro"), where).items():
        cat.macros[name] = macro_from_dict(name, mc, f"{where}: macro.{name}")
    for name, net in _names("networks", raw.get("networks"), where).items():
        cat.networks[name] = architecture_from_dict(name, net, f"{where}: networks.{name}",
                                                    cat.spaces, cat.macros)
    cat.own = {"spaces": set(_names("spaces", raw.get("spaces"), where)),
               "macros": set(_names("macro", raw.get("macro"), where)),
               "networks": set(_names("networks", raw.get("networks"), where))}
    return cat


@functools.lru_cache(maxsize=1)
def builtin() -> Catalog:
    """The built-in spaces, macro-architectures and networks (NSE's)."""
    text = resources.files("hwnas.data").joinpath("nse.json").read_text()
    return catalog_from_dict(json.loads(text), "built-in nse.json")


def read_document(path: Path) -> Any:
    """JSON, or YAML when the suffix says so."""
    from hwnas.files import read_text

    text = read_text(path, "spec file")
    if path.suffix in (".yaml", ".yml"):
        yaml = require("yaml", "yaml", "Reading YAML files")
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        except RecursionError:
            raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        from hwnas.files import looks_truncated

        truncated = " (the file ends early: truncated?)" if looks_truncated(exc, text) else ""
        raise SpecError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                        f"{truncated}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid JSON: nested too deeply") from None


def load_file(path: str | Path) -> Catalog:
    p = Path(path)
    return catalog_from_dict(read_document(p), str(p), builtin())


def _split_ref(ref: str) -> tuple[Path, str | None] | None:
    """FILE or FILE:NAME if that names an existing file, else None (a built-in name)."""
    if Path(ref).is_file():
        return Path(ref), None
    head, sep, name = ref.rpartition(":")
    if sep and Path(head).is_file():
        return Path(head), name
    if ref.endswith((".json", ".yaml", ".yml")) or "/" in ref:
        raise HwnasError(f"no such file: {ref}")
    return None


def _pick(kind: str, items: dict[str, Any], name: str | None, where: str, own: set[str]) -> Any:
    if name is None:
        candidates = sorted(own)
        if len(candidates) != 1:
            listed = ", ".join(candidates) or "none"
            raise HwnasError(f"{where} defines {len(candidates)} {kind}s ({listed}); "
                             f"choose one with {where}:NAME")
        name = candidates[0]
    if name not in items:
        raise HwnasError(f"unknown {kind} '{name}' in {where}; known: {', '.join(sorted(items)) or 'none'}")
    return items[name]


def _resolve(kind: str, attr: str, ref: str) -> Any:
    split = _split_ref(ref)
    if split is None:
        items = getattr(builtin(), attr)
        if ref not in items:
            raise HwnasError(f"unknown {kind} '{ref}'; built-in {kind}s: {', '.join(sorted(items))} "
                             f"(or give a JSON/YAML file)")
        return items[ref]
    path, name = split
    cat = load_file(path)
    return _pick(kind, getattr(cat, attr), name, str(path), cat.own[attr])


def resolve_architecture(ref: str) -> Architecture:
    """An architecture by built-in name, file (its only network) or FILE:NAME."""
    return _resolve("architecture", "networks", ref)  # type: ignore[no-any-return]


def resolve_space(ref: str) -> Space:
    """A search space by built-in name, file or FILE:NAME."""
    return _resolve("space", "spaces", ref)  # type: ignore[no-any-return]


def resolve_macro(ref: str) -> Macro:
    """A macro-architecture by built-in name, file or FILE:NAME."""
    return _resolve("macro-architecture", "macros", ref)  # type: ignore[no-any-return]
