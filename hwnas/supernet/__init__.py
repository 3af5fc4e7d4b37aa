"""Supernet: multi-branch cells, fitness indicators, the resource regularizer, simplification."""

from hwnas.supernet.cell import SupernetCell, sample_config
from hwnas.supernet.costs import CostModel, LayerCosts, cost_model
from hwnas.supernet.fitness import FitnessIndicators, PairSample, simulated_output
from hwnas.supernet.regularizer import FORMS, ResourceRegularizer
from hwnas.supernet.simplify import simplify, simplify_layer

__all__ = ["FORMS", "CostModel", "FitnessIndicators", "LayerCosts", "PairSample", "ResourceRegularizer",
           "SupernetCell", "cost_model", "sample_config", "simplify", "simplify_layer", "simulated_output"]
