"""Public numerical checks: Taylor tests and observed orders of convergence."""

from ._taylor import TaylorResult, observed_order, taylor_test

__all__ = ["TaylorResult", "observed_order", "taylor_test"]
