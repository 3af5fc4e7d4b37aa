"""Cost accounting (MACs, params, traffic) in one place."""

from hwnas.costs.counting import (Cost, NetworkCost, cell_cost, head_cost, head_traffic, network_cost, op_cost,
                                  op_traffic, stem_cost, stem_traffic)

__all__ = ["Cost", "NetworkCost", "cell_cost", "head_cost", "head_traffic", "network_cost", "op_cost", "op_traffic",
           "stem_cost", "stem_traffic"]
