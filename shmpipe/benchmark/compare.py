"""``shmpipe bench --compare REV``: this checkout against another commit, in one run.

A speed claim travels only as a ratio measured side by side on one machine. This runs the
same measurements in fresh processes of the two trees alternately (REV, this, this, REV, ...;
REV is extracted with ``git archive`` into a temporary directory), keeps each side's best time
of every round, and prints REV's time over this checkout's (> 1: this checkout is faster),
the CPU model (as ``lscpu`` names it) and one core's read bandwidth measured in the same
processes, with each measurement's ratio to its bandwidth bound (bytes it reads / bandwidth).

Measured in each process (one thread, as a worker): the public integrator
(``AzimuthalIntegrator.integrate1d``, uint16, tilted geometry, 1000 bins in q, no splitting
and bbox) on a stitched image and on the LAMBDA 9M module parts, the decompression of 12
bitshuffle-LZ4 LAMBDA modules into one slot (``decompress_into``; its bound: payload and
modules), and numpy's sum over an array larger than the caches (the bandwidth). pyFAI (CSR,
Cython) is timed once, in a process of its own, on the stitched image, for the ratio the issue
names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from native_kernels.cpu import cpu_model

# The measurement a child runs, in the tree whose root is argv[1]; prints one JSON line.
CHILD = r"""
import json, os, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"
sys.path.insert(0, sys.argv[1])
import numpy as np
quick = sys.argv[2] == "quick"
what = sys.argv[3]
PARAMS = (0.25, 0.083, 0.071, -0.05, 0.03, 0.0)
WL = 1e-10
SHAPE = (300, 280) if quick else (3100, 3000)
REPS = 3 if quick else 7

def best(f):
    f(); f()
    ts = []
    for _ in range(REPS):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

out = {}
img = np.random.default_rng(3).poisson(500, SHAPE).astype(np.uint16)
if what == "pyfai":
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    ai = AzimuthalIntegrator(*PARAMS, detector=Detector(7.5e-5, 7.5e-5, max_shape=SHAPE),
                             wavelength=WL)
    for m in ("no", "bbox"):
        out[f"stitched {m}"] = best(lambda: ai.integrate1d(img, 1000, unit="q_nm^-1",
                                                           method=(m, "csr", "cython")))
    print(json.dumps(out)); sys.exit(0)
big = np.ones((8 if quick else 64) * 2**20 // 8 * 8, np.float64)  # 64 MiB: beyond the caches
big.sum()
out["read"] = best(lambda: big.sum()) / big.nbytes  # seconds per byte
import native_kernels as nk
from native_kernels.geometry import DetectorGeometry, ModulePlacement
pix = DetectorGeometry(SHAPE, (ModulePlacement(0, 0),), (7.5e-5, 7.5e-5), name="image")
cases = {"stitched": (nk.AzimuthalIntegrator(*PARAMS, wavelength=WL, geometry=pix), img)}
if not quick:
    lam = nk.AzimuthalIntegrator(*PARAMS, wavelength=WL)
    g = lam.geometry
    rng = np.random.default_rng(4)
    parts = [rng.poisson(500, g.module_shape).astype(np.uint16) for _ in g.present]
    cases["modules"] = (lam, parts)
engines = {}
for layout, (ai, data) in cases.items():
    n = sum(d.size for d in data) if isinstance(data, list) else data.size
    for m in ("no", "bbox"):
        f = lambda: ai.integrate1d(data, 1000, unit="q_nm^-1", method=(m, "csr", "cython"))
        out[f"{layout} {m}"] = best(f)
        # bytes the loop reads: the pixels and the table rows (2 B a pixel without splitting,
        # 6 with bbox), or what the plan says it streams
        plans = [p for p in getattr(ai, "_plans", {}).values() if getattr(p, "split", m) == m]
        per_px = 2 + (2 if m == "no" else 6)
        if plans and hasattr(plans[-1], "bytes_per_frame"):
            per_px = plans[-1].bytes_per_frame(2) / n
        out[f"{layout} {m} bytes"] = n * per_px
    for plan in getattr(ai, "_plans", {}).values():
        if hasattr(plan, "engine_choices"):
            engines.update(plan.engine_choices())
# The decompression stage: 12 bitshuffle-LZ4 modules (Poisson counts) into one slot.
from native_kernels.compression import compress, decompress_into
mshape = (64, 96) if quick else (516, 1556)
rate = np.linspace(0.5, 20.0, mshape[1])[None, :].repeat(mshape[0], 0)
mods = [np.random.default_rng(5 + i).poisson(rate).astype(np.uint16) for i in range(12)]
payloads = [compress(m) for m in mods]
slot = np.empty((12, *mshape), np.uint16)
def decode():
    for i, p in enumerate(payloads):
        decompress_into(p, slot[i])
out["decompress 12 modules"] = best(decode)
out["decompress 12 modules bytes"] = sum(p.nbytes for p in payloads) + slot.nbytes
assert all(np.array_equal(slot[i], m) for i, m in enumerate(mods))
try:
    from native_kernels.bslz4_decode import choice
    engines["decompress bitshuffle-LZ4"] = choice(2)
except ImportError:  # a tree from before the decoder builds were chosen
    pass
print(json.dumps({"times": out, "engines": engines}))
"""


class CompareError(Exception):
    """REV cannot be extracted (not a commit, no git): reported before anything runs."""


def this_tree() -> Path:
    """The root of the checkout this code runs from (``shmpipe/`` and ``native_kernels/``)."""
    return Path(__file__).resolve().parents[2]


def extract(rev: str, into: Path) -> str:
    """``git archive`` the code of ``rev`` into ``into``; return its full commit id."""
    root = this_tree()
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise CompareError(f"--compare {rev!r}: not a commit of the checkout at {root}") from None
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", sha, "native_kernels", "shmpipe"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return sha


def _child(tree: Path, quick: bool, what: str = "ours") -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), "quick" if quick else "full", what],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        env=env,
    )
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measurement in {tree} failed: {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare(
    rev: str, rounds: int = 3, quick: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the measurements of REV and of this checkout alternately; return the report.

    Raises
    ------
    CompareError
        When ``rev`` is not a commit of this checkout.
    """
    with tempfile.TemporaryDirectory(prefix="shmpipe-compare-") as tmp:
        old = Path(tmp)
        sha = extract(rev, old)
        sides = {"rev": old, "this": this_tree()}
        times: dict[str, dict[str, list[float]]] = {"rev": {}, "this": {}}
        engines: dict[str, dict] = {}
        for i in range(rounds):
            order = ("rev", "this") if i % 2 == 0 else ("this", "rev")
            for side in order:
                log(f"round {i + 1}/{rounds}: {side} ({sides[side]}) ...")
                got = _child(sides[side], quick)
                for name, t in got["times"].items():
                    times[side].setdefault(name, []).append(t)
                if side == "this":
                    engines.update(got.get("engines", {}))
    pyfai: dict[str, float] = {}
    try:
        log("pyFAI (csr, cython), once ...")
        pyfai = _child(this_tree(), quick, "pyfai")
    except RuntimeError as exc:  # pyFAI missing: the ratios to it are left out
        log(f"  no pyFAI figures: {exc}")
    return summarise(rev, sha, times, engines, pyfai)


def summarise(
    rev: str,
    sha: str,
    times: dict[str, dict[str, list[float]]],
    engines: dict[str, dict],
    pyfai: dict[str, float],
) -> dict[str, Any]:
    """Best time of each side (min over rounds), REV/this ratios and bandwidth bounds."""
    best = {
        s: {k: min(v) for k, v in t.items() if not k.endswith(" bytes")} for s, t in times.items()
    }
    nbytes_of = {k[:-6]: v[0] for k, v in times["this"].items() if k.endswith(" bytes")}
    read = {s: best[s].pop("read") for s in best}  # seconds per byte
    bandwidth = {s: 1.0 / read[s] / 1e9 for s in read}
    rows = []
    for name in best["this"]:
        t_this, t_rev = best["this"][name], best["rev"].get(name)
        nbytes = nbytes_of.get(name, 0)
        rows.append(
            {
                "measurement": name if name.startswith("decompress") else f"integrate1d {name}",
                "rev_ms": None if t_rev is None else t_rev * 1e3,
                "this_ms": t_this * 1e3,
                "rev_over_this": None if t_rev is None else t_rev / t_this,
                "bandwidth_bound_ms": nbytes * read["this"] * 1e3,
                "over_bound": t_this / (nbytes * read["this"]) if nbytes else None,
                "pyfai_over_this": pyfai.get(name, 0.0) / t_this if name in pyfai else None,
            }
        )
    return {
        "rev": rev,
        "rev_commit": sha,
        "cpu_model": cpu_model(),
        "read_bandwidth_gbs": bandwidth,
        "rounds": len(next(iter(times["this"].values()), [])),
        "rows": rows,
        "engines": engines,
        "pyfai_ms": {k: v * 1e3 for k, v in pyfai.items()},
    }


def format_report(r: dict[str, Any]) -> str:
    """The comparison as the text ``shmpipe bench --compare`` prints."""
    bw = r["read_bandwidth_gbs"]
    lines = [
        f"this checkout against {r['rev']} ({r['rev_commit'][:10]}), {r['rounds']} rounds "
        "alternating fresh processes, best of each side",
        f"CPU: {r['cpu_model']}; one core reads {bw['this']:.1f} GB/s "
        f"(numpy sum; {bw['rev']:.1f} GB/s in REV's processes)",
        "",
        f"{'measurement':30s} {'REV ms':>8s} {'this ms':>8s} {'REV/this':>9s} "
        f"{'bound ms':>9s} {'x bound':>8s} {'x pyFAI':>8s}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['measurement']:30s} {_num(row['rev_ms'], 2):>8s} {row['this_ms']:8.2f} "
            f"{_num(row['rev_over_this'], 2):>9s} {row['bandwidth_bound_ms']:9.2f} "
            f"{_num(row['over_bound'], 1):>8s} {_num(row['pyfai_over_this'], 1):>8s}"
        )
    if r["engines"]:
        lines += ["", "engines chosen in this checkout (key: engine, how):"]
        lines += [f"  {k}: {v['engine']} ({v['how']})" for k, v in sorted(r["engines"].items())]
    lines += [
        "",
        "REV/this > 1: this checkout is faster. bound: the bytes the loop reads (pixels and table "
        "rows) at the measured read bandwidth; x pyFAI: pyFAI's time over this one's.",
    ]
    return "\n".join(lines)


def _num(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"
