"""trpo: Trust Region Policy Optimization (Schulman et al., 2015) for Gymnasium environments."""

__version__ = "0.1.0"

from trpo.agent import TRPO
from trpo.config import TRPOConfig

__all__ = ["TRPO", "TRPOConfig", "__version__"]
