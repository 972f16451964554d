"""Benchmarks of the engine and the kernels: one module per measurement, the node model, the
report (``shmpipe bench``; the pytest-benchmark suites in ``bench/`` call the same functions)."""

from shmpipe.benchmark.anchors import (
    cpu_anchor,
    memory_anchor,
)
from shmpipe.benchmark.copy import (
    copy_rate,
)
from shmpipe.benchmark.inputs import (
    KERNELS,
    LAMBDA_MODULE_SHAPE,
    QUICK_MODULE_SHAPE,
    SuiteOptions,
    TimingSink,
    TimingSinkParams,
    geometry_file,
    lambda_chain,
    null_chain,
    pipeline_config,
    sim_parts,
    sim_parts_lz4,
    sim_source,
)
from shmpipe.benchmark.model import (
    ModelAssumptions,
    chain_bytes_per_frame,
    compressed_frame_bytes,
    node_model,
)
from shmpipe.benchmark.naive_pool import (
    naive_pool_rate,
)
from shmpipe.benchmark.pipeline_run import (
    RunResult,
    all_ready_wall,
    engine_latency_mean,
    frames_per_handover,
    kernel_means_ms,
    percentiles,
    run_pipeline,
    steady_rate,
    worker_busy_ms,
)
from shmpipe.benchmark.report import (
    GOALS,
    goals,
    plots,
    print_summary,
    report_markdown,
)
from shmpipe.benchmark.startup import (
    startup_time,
)
from shmpipe.benchmark.suite import (
    run_suite,
)

__all__ = [
    "GOALS",
    "KERNELS",
    "LAMBDA_MODULE_SHAPE",
    "ModelAssumptions",
    "QUICK_MODULE_SHAPE",
    "RunResult",
    "SuiteOptions",
    "TimingSink",
    "TimingSinkParams",
    "all_ready_wall",
    "chain_bytes_per_frame",
    "compressed_frame_bytes",
    "copy_rate",
    "cpu_anchor",
    "engine_latency_mean",
    "frames_per_handover",
    "geometry_file",
    "goals",
    "kernel_means_ms",
    "lambda_chain",
    "memory_anchor",
    "naive_pool_rate",
    "node_model",
    "null_chain",
    "percentiles",
    "pipeline_config",
    "plots",
    "print_summary",
    "report_markdown",
    "run_pipeline",
    "run_suite",
    "sim_parts",
    "sim_parts_lz4",
    "sim_source",
    "startup_time",
    "steady_rate",
    "worker_busy_ms",
]
