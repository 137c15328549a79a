"""Compute accounting: analytic FLOPs, the counter cross-check and parameter counts."""

from synthscale.compute.flops import Flops, count_flops, param_counts

__all__ = ["Flops", "count_flops", "param_counts"]
