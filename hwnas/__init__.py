"""hwnas: hardware-aware neural architecture search for GPUs.

Profiles the candidate operations of a search space into latency/MACs lookup tables, prices
architectures with them, trains multi-branch supernets under a table-driven resource
regularizer (NSE: Ci et al., "Evolving Search Space for Neural Architecture Search", ICCV
2021), and exports and benchmarks the searched networks. The public API, by task (the
reference, with units and defaults, is docs/api.md):

Search spaces and architectures
    builtin, resolve_space, resolve_macro, resolve_architecture, sample_architecture,
    Space, Macro, Position, Architecture
Lookup tables: build, load, query, validate
    Table (Table.load, .latency, .entry, .positions), build_table, validate_table, check_machine,
    Protocol, transfer_table (a table for this device from another device's, measuring a tenth of it)
Profiling backends
    get_backend, register_backend, backend_names, Backend, Runner
Pricing an architecture
    predict (a table: calibrated latency per batch, MACs, params), network_cost (MACs and
    params, no table), cost_model / CostModel / LayerCosts (any branch combination of layers)
The supernet
    SupernetCell (reference), FusedSupernetCell (the fused multi-branch layer), sample_config,
    Supernet, weight_step, theta_step
Fitness indicators, regularizer, simplification
    FitnessIndicators, PairSample, simulated_output, ResourceRegularizer, simplify,
    simplify_layer, dry_run
Networks, export and bench
    build_network, reparameterize, export_onnx, export_engine, benchmark, BenchResult
Errors
    HwnasError (a user error whose message says how to fix it), SpecError

`import hwnas` is light: each name imports its module on first use, so onnxruntime, onnx
and TensorRT load only when a table is profiled or a network exported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hwnas._version import __version__

# public name -> module that defines it (imported on first access)
_HOMES: dict[str, str] = {
    # search spaces and architectures
    "builtin": "hwnas.spaces.catalog",
    "resolve_space": "hwnas.spaces.catalog",
    "resolve_macro": "hwnas.spaces.catalog",
    "resolve_architecture": "hwnas.spaces.catalog",
    "sample_architecture": "hwnas.spaces.sampling",
    "Space": "hwnas.spaces.arch",
    "Architecture": "hwnas.spaces.arch",
    "Macro": "hwnas.spaces.macro",
    "Position": "hwnas.spaces.macro",
    # lookup tables
    "Table": "hwnas.profiling.table",
    "build_table": "hwnas.profiling.build",
    "validate_table": "hwnas.profiling.validate",
    "transfer_table": "hwnas.profiling.transfer",
    "check_machine": "hwnas.profiling.reference",
    "Protocol": "hwnas.profiling.protocol",
    # profiling backends
    "get_backend": "hwnas.profiling.backends",
    "register_backend": "hwnas.profiling.backends",
    "backend_names": "hwnas.profiling.backends",
    "Backend": "hwnas.profiling.backends.base",
    "Runner": "hwnas.profiling.protocol",
    # pricing
    "predict": "hwnas.profiling.predict",
    "network_cost": "hwnas.costs.counting",
    "cost_model": "hwnas.supernet.costs",
    "CostModel": "hwnas.supernet.costs",
    "LayerCosts": "hwnas.supernet.costs",
    # the supernet
    "SupernetCell": "hwnas.supernet.cell",
    "sample_config": "hwnas.supernet.cell",
    "FusedSupernetCell": "hwnas.supernet.fused",
    "Supernet": "hwnas.supernet.network",
    "weight_step": "hwnas.supernet.network",
    "theta_step": "hwnas.supernet.network",
    # fitness indicators, regularizer, simplification
    "FitnessIndicators": "hwnas.supernet.fitness",
    "PairSample": "hwnas.supernet.fitness",
    "simulated_output": "hwnas.supernet.fitness",
    "ResourceRegularizer": "hwnas.supernet.regularizer",
    "simplify": "hwnas.supernet.simplify",
    "simplify_layer": "hwnas.supernet.simplify",
    "dry_run": "hwnas.supernet.search",
    # networks, export, bench
    "build_network": "hwnas.model.network",
    "reparameterize": "hwnas.export.reparam",
    "export_onnx": "hwnas.export.onnx_export",
    "export_engine": "hwnas.export.engine",
    "benchmark": "hwnas.bench.timing",
    "BenchResult": "hwnas.bench.timing",
    # errors
    "HwnasError": "hwnas.errors",
    "SpecError": "hwnas.errors",
}
# public names whose definition has another name in its module
_RENAMED = {"validate_table": "validate"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hwnas' has no attribute '{name}'")
    value = getattr(importlib.import_module(_HOMES[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from hwnas.bench.timing import BenchResult, benchmark
    from hwnas.costs.counting import network_cost
    from hwnas.errors import HwnasError, SpecError
    from hwnas.export.engine import export_engine
    from hwnas.export.onnx_export import export_onnx
    from hwnas.export.reparam import reparameterize
    from hwnas.model.network import build_network
    from hwnas.profiling.backends import backend_names, get_backend, register_backend
    from hwnas.profiling.backends.base import Backend
    from hwnas.profiling.build import build_table
    from hwnas.profiling.predict import predict
    from hwnas.profiling.protocol import Protocol, Runner
    from hwnas.profiling.reference import check_machine
    from hwnas.profiling.table import Table
    from hwnas.profiling.transfer import transfer_table
    from hwnas.profiling.validate import validate as validate_table
    from hwnas.spaces.arch import Architecture, Space
    from hwnas.spaces.catalog import builtin, resolve_architecture, resolve_macro, resolve_space
    from hwnas.spaces.macro import Macro, Position
    from hwnas.spaces.sampling import sample_architecture
    from hwnas.supernet.cell import SupernetCell, sample_config
    from hwnas.supernet.costs import CostModel, LayerCosts, cost_model
    from hwnas.supernet.fitness import FitnessIndicators, PairSample, simulated_output
    from hwnas.supernet.fused import FusedSupernetCell
    from hwnas.supernet.network import Supernet, theta_step, weight_step
    from hwnas.supernet.regularizer import ResourceRegularizer
    from hwnas.supernet.search import dry_run
    from hwnas.supernet.simplify import simplify, simplify_layer
