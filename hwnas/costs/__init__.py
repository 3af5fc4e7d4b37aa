"""Cost accounting (MACs, params) in one place."""

from hwnas.costs.counting import Cost, NetworkCost, cell_cost, head_cost, network_cost, op_cost, stem_cost

__all__ = ["Cost", "NetworkCost", "cell_cost", "head_cost", "network_cost", "op_cost", "stem_cost"]
