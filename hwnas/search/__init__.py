"""The NSE search (Ci et al., "Evolving Search Space for Neural Architecture Search", ICCV 2021):
supernet rounds on a search-space subset, Pareto retrieval, aggregation and replenishment,
driven by a latency (or MACs) lookup table. `search()` runs one; `hwnas search run` is its command."""

from hwnas.search.config import SearchConfig, read_config
from hwnas.search.data import TensorImages, load_data, load_image_folder, load_npz
from hwnas.search.evolution import Evolution, aggregate
from hwnas.search.pareto import pareto_front
from hwnas.search.run import Search, SearchResult, search

__all__ = ["Evolution", "Search", "SearchConfig", "SearchResult", "TensorImages", "aggregate", "load_data",
           "load_image_folder", "load_npz", "pareto_front", "read_config", "search"]
