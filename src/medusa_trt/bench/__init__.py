"""Benchmarking: async streaming load generator, vLLM-style metrics, reports, plots, datasets."""

from medusa_trt.bench.metrics import RequestRecord, compute_metrics
from medusa_trt.bench.report import SCHEMA_VERSION, BenchReport
from medusa_trt.bench.runner import BenchConfig, run_benchmark

__all__ = ["SCHEMA_VERSION", "BenchConfig", "BenchReport", "RequestRecord", "compute_metrics", "run_benchmark"]
