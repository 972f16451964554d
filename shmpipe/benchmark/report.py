"""The report of ``shmpipe bench``: goals, plots, the summary and the Markdown page."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.benchmark.beamline import report_markdown as beamline_markdown
from shmpipe.benchmark.inputs import SuiteOptions

GOALS = {
    "engine_bound_vs_copy": 0.8,
    "engine_bound_vs_copy_minimum": 0.6,
    "naive_pool_speedup": 5.0,
    "small_messages_per_s": 20000.0,
    "scaling_1_to_2": 1.7,
    "latency_p99_over_chain": 3.0,
}


QUICK_NOTE = (
    "quick run: tiny frames ({shape[0]} x {shape[1]}) and a handful of each, to check that "
    "every measurement runs; its numbers say nothing about this node, so no goal is judged "
    "and no node model is given (run without --quick to measure)"
)


def _fmt_ms(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in d.items())


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the benchmark: measured value, goal, met or not."""
    scaling = report["scaling"]["runs"]
    by_w = {r["workers"]: r for r in scaling}
    rows = [
        ("engine bound: null, 2 workers, frames/s over copy rate", "engine_bound_vs_copy",
         report["engine_bound"]["ratio_steady"], ">="),
        ("engine bound: the minimum acceptable", "engine_bound_vs_copy_minimum",
         report["engine_bound"]["ratio_steady"], ">="),
        ("engine over naive multiprocessing.Pool, frames/s", "naive_pool_speedup",
         report["naive_pool"]["speedup"], ">="),
        ("small messages (1 KB) per second", "small_messages_per_s",
         report["small_messages"]["fps_steady"], ">="),
    ]  # fmt: skip
    if 1 in by_w and 2 in by_w:
        rows.append(
            ("LAMBDA chain speedup 1 -> 2 workers", "scaling_1_to_2", by_w[2]["speedup"], ">=")
        )
    rows.append(
        ("latency p99 over the chain's time per frame", "latency_p99_over_chain",
         report["latency"]["p99_over_chain"], "<=")
    )  # fmt: skip
    out = []
    for text, key, value, op in rows:
        goal = GOALS[key]
        met = bool(value >= goal) if op == ">=" else bool(value <= goal)
        out.append({"goal": text, "key": key, "measured": value, "target": f"{op} {goal}",
                    "met": met})  # fmt: skip
    return out


def _meta(opts: SuiteOptions, shape: tuple[int, int], modules: int) -> dict[str, Any]:
    import numba

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "commit": commit,
        "quick": opts.quick,
        "module_shape": list(shape),
        "modules": modules,
        "workers": list(opts.workers),
        "frame_bytes": modules * shape[0] * shape[1] * 2,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- plots -----------------------------------------------------------------------------------
def plots(report: dict[str, Any], out: Path, latency_s: np.ndarray) -> list[Path]:
    """Write throughput_vs_workers.png, latency.png and stages.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = report["scaling"]["runs"]
    w = [r["workers"] for r in runs]
    fps = [r["fps_steady"] for r in runs]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(w, fps, "o-", label="measured")
    if runs:
        ax.plot(w, [fps[0] * x for x in w], "--", color="grey", label="linear")
    ax.set_xlabel("workers")
    ax.set_ylabel("frames/s (LAMBDA chain)")
    ax.set_xticks(w)
    ax.legend()
    ax.set_title("Throughput against workers")
    fig.tight_layout()
    paths.append(out / "throughput_vs_workers.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    ms = np.asarray(latency_s) * 1e3
    if len(ms):  # no plot of nothing: a run with no frame after settling has no latency
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(ms, bins=min(40, max(5, len(ms) // 2)))
        lat = report["latency"]
        for q, style in (("p50_s", "-"), ("p99_s", "--")):
            if lat[q] is not None and math.isfinite(lat[q]):
                ax.axvline(
                    lat[q] * 1e3, color="k", ls=style, label=f"{q[:3]} {lat[q] * 1e3:.1f} ms"
                )
        ax.legend()
        ax.set_xlabel("dispatch -> publish latency (ms)")
        ax.set_ylabel("frames")
        ax.set_title(f"Latency at {report['latency']['rate']:.2f} frames/s")
        fig.tight_layout()
        paths.append(out / "latency.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    e2e = report["end_to_end"]
    names = [*e2e["kernel_ms"], "engine overhead"]
    vals = [*e2e["kernel_ms"].values(), max(0.0, e2e["engine_overhead_ms_per_frame"])]
    ax.barh(names, vals)
    ax.set_xlabel("ms per frame (1 worker)")
    ax.set_title("Time per stage")
    ax.invert_yaxis()
    fig.tight_layout()
    paths.append(out / "stages.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def print_summary(report: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Print the goal table of a report (a quick run's note instead)."""
    if report.get("note"):
        log(report["note"])
        return
    for g in report["goals"]:
        mark = "met" if g["met"] else "NOT met"
        measured = g["measured"]
        shown = f"{measured:>10.3f}" if measured is not None else f"{'n/a':>10}"
        log(f"{g['goal']:<58} {shown}  goal {g['target']:<10} {mark}")
    m = report["model"]
    log(
        f"model: {m['predicted_fps']:.1f} frames/s on a {m['assumptions']['cores']}-core node "
        f"({m['bound_by']}); {m['nodes_for_detector']} nodes for "
        f"{m['assumptions']['detector_rate_hz']:.0f} Hz; memory "
        f"{m['assumptions']['mem_bandwidth_gbs']:.0f} GB/s as measured on "
        f"{report.get('machine', {}).get('cpu_model', 'this machine')}"
    )


def report_markdown(report: dict[str, Any]) -> str:
    """The report's figures as Markdown tables (what docs/performance.md shows)."""
    m, eb, nv = report["meta"], report["engine_bound"], report["naive_pool"]
    sm, lat, e2e = report["small_messages"], report["latency"], report["end_to_end"]
    cp = report["copy"]
    nl = report["naive_pool_lambda"]
    lines = [
        f"Measured {m['date']} on `{m['host']}` ({m['cpus']} CPUs, Python {m['python']}, "
        f"numpy {m['numpy']}, numba {m['numba']}), commit `{m['commit']}`; frames "
        f"{m['modules']} x {m['module_shape'][0]} x {m['module_shape'][1]} uint16 "
        f"({m['frame_bytes'] / 1e6:.1f} MB).",
        "",
    ]
    if report.get("note"):
        lines += [f"**{report['note']}**", ""]
    else:
        lines += ["| goal | measured | target | met |", "|---|---:|---|---|"]
    for g in report["goals"]:
        lines.append(
            f"| {g['goal']} | {g['measured']:.3g} | {g['target']} | {'yes' if g['met'] else 'no'} |"
        )
    stream = cp.get("streaming", {}).get("fps", math.nan)
    lines += [
        "",
        "| measurement | value |",
        "|---|---:|",
        f"| copy anchor (memcpy, one process, reused buffer), frames/s | {cp['fps']:.0f} |",
        f"| streaming-copy reference (one process), frames/s | {stream:.0f} |",
        f"| engine, null kernel, 2 workers, frames/s (steady) | {eb['fps_steady']:.0f} |",
        f"| engine, null kernel, 2 workers, GB/s (steady) | {eb['gbps_steady']:.2f} |",
        f"| engine, null kernel, 2 workers, frames/s (whole run, start-up included) | "
        f"{eb['fps_wall']:.0f} |",
        f"| engine / streaming-copy reference | {eb['ratio_vs_streaming_copy']:.2f} |",
        f"| naive `multiprocessing.Pool` ({nv['workers']} workers, pickled frames), frames/s "
        f"| {nv['pool']['fps']:.1f} |",
        f"| engine, same chain and workers, frames/s | {nv['engine']['fps_steady']:.0f} |",
        f"| naive `Pool`, LAMBDA chain ({nl['workers']} workers), frames/s | "
        f"{nl['pool']['fps']:.2f} |",
        f"| engine, LAMBDA chain, same workers, frames/s | {nl['engine_fps']:.2f} |",
        f"| 1 KB messages/s (steady) | {sm['fps_steady']:.0f} |",
        f"| 1 KB message latency p50 / p99, ms | {sm['latency_p50_s'] * 1e3:.2f} / "
        f"{sm['latency_p99_s'] * 1e3:.2f} |",
        f"| 1 KB messages: ring slots, messages per hand-over to the workers | "
        f"{sm.get('slots', 0)}, {sm.get('frames_per_handover', math.nan):.1f} |",
        "",
        "| workers | frames/s | speedup | efficiency | machine CPU speedup | "
        + " | ".join(f"{k} ms" for k in e2e["kernel_ms"])
        + " |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(e2e["kernel_ms"]),
    ]
    for r in report["scaling"]["runs"]:
        lines.append(
            f"| {r['workers']} | {r['fps_steady']:.2f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.2f} | {r.get('machine_cpu_speedup', math.nan):.2f} | "
            + " | ".join(f"{r['kernel_ms'].get(k, math.nan):.1f}" for k in e2e["kernel_ms"])
            + " |"
        )
    st = report["startup"]
    cold = st.get("cold", {}).get("first_result_s")
    cold_text = "not measured (--no-cold-start)" if cold is None else f"{cold:.2f}"
    lines += [
        "",
        "| end to end (1 worker) | value |",
        "|---|---:|",
        f"| sum of the stages' kernel times, ms | {e2e['kernel_sum_ms']:.1f} |",
        f"| frames/s if the engine cost nothing (1 / sum) | {e2e['ideal_fps']:.2f} |",
        f"| frames/s measured | {e2e['fps']:.2f} |",
        f"| worker time per frame (claim to done), ms | {e2e['worker_busy_ms']:.2f} |",
        f"| engine overhead in the worker per frame (that minus the kernels), ms | "
        f"{e2e['engine_overhead_ms_per_frame']:.2f} |",
        f"| wall time per frame minus the kernels, ms | {e2e['wall_minus_kernels_ms']:.2f} |",
        "",
        "| latency and start-up | value |",
        "|---|---:|",
        f"| source paced at, frames/s ({lat['workers']} workers) | {lat['rate']:.2f} |",
        f"| dispatch -> publish p50 / p99, ms | {lat['p50_s'] * 1e3:.1f} / "
        f"{lat['p99_s'] * 1e3:.1f} |",
        f"| chain's own time per frame, ms | {lat['chain_ms']:.1f} |",
        f"| p99 with the start-up backlog, ms | {lat['p99_with_startup_s'] * 1e3:.1f} |",
        f"| first result, cold Numba cache, s | {cold_text} |",
        f"| first result, warm Numba cache, s | {st['warm']['first_result_s']:.2f} |",
    ]
    if report.get("note"):
        text = "\n".join(lines) + "\n"
        if "beamline" in report:
            text += "\n" + beamline_markdown(report["beamline"])
        return text
    mo = report["model"]
    a = mo["assumptions"]
    lines += [
        "",
        "| node model | value |",
        "|---|---:|",
        f"| CPU time per frame (kernels + engine), ms | {mo['cpu_ms_per_frame']:.1f} |",
        f"| bytes moved per frame (reads + writes), MB | {mo['bytes_per_frame'] / 1e6:.0f} |",
        f"| {a['cores']:.0f}-core node, compute bound ({mo['workers']:.0f} workers), frames/s | "
        f"{mo['fps_compute']:.0f} |",
        f"| dispatcher bound, frames/s | {mo['fps_dispatcher']:.0f} |",
        f"| memory bound at {a['mem_bandwidth_gbs']:.0f} GB/s (measured here: "
        f"{report.get('machine', {}).get('cpu_model', '?')}), frames/s | {mo['fps_memory']:.0f} |",
        f"| **predicted frames/s per node** ({mo['bound_by']}) | **{mo['predicted_fps']:.0f}** |",
        f"| **nodes for a {a['detector_rate_hz']:.0f} Hz LAMBDA 9M** | "
        f"**{mo['nodes_for_detector']}** |",
    ]
    text = "\n".join(lines) + "\n"
    if "beamline" in report:
        text += "\n" + beamline_markdown(report["beamline"])
    return text
