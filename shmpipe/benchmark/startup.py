"""Start-up time: until the first result in a fresh process, cold and warm caches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from shmpipe.benchmark.pipeline_run import run_pipeline


# -- start-up: a fresh process, cold or warm Numba cache ---------------------------------------
def _startup_child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    r = run_pipeline(
        spec["source"],
        spec["kernels"],
        spec["workers"],
        Path(spec["workdir"]),
        cache_dir=spec["cache_dir"],
    )
    print(json.dumps({"first_result_s": r.first_result_s, "error": r.error}))


def startup_time(
    source: dict,
    kernels: dict,
    workers: int,
    numba_cache: Path | None,
    cache_dir: Path,
    workdir: Path,
) -> dict[str, float]:
    """Time until the first result of a run in a fresh Python process.

    ``first_result_s`` counts from ``Pipeline.run()``; ``process_first_result_s`` from the
    process start (interpreter, imports). The Numba cache is ``numba_cache`` and the kernels'
    table cache ``cache_dir``: empty directories make a cold start, a second call a warm one.
    """
    spec = {
        "source": source,
        "kernels": kernels,
        "workers": workers,
        "workdir": str(workdir),
        "cache_dir": str(cache_dir),
    }
    env = dict(os.environ)
    if numba_cache is not None:  # None: the process's usual Numba cache
        env["NUMBA_CACHE_DIR"] = str(numba_cache)
    code = (
        "import sys; from shmpipe.benchmark.startup import _startup_child; "
        "_startup_child(sys.argv[1])"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    total = time.perf_counter() - t0
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"first_result_s": math.nan, "process_s": total, "error": out.stderr[-2000:]}
    return {
        "first_result_s": res["first_result_s"],
        "process_s": total,
        "error": res["error"],
    }
