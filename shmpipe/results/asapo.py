"""Reading results back from the ASAPO sink's output streams, with the real ``asapo_consumer``.

Each output record carries the input's id, the outputs' layout (name, dtype, shape, offset,
unit, axis) and lineage (input ids and names, kernel chain, configuration hashes, run) in its
user meta; this module turns a stream of them into the same ``Results`` as a file gives.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from shmpipe.results.model import Results


def _consumer(endpoint: str, beamtime: str, data_source: str, token: str, timeout_ms: int):
    import asapo_consumer

    return asapo_consumer.create_consumer(
        endpoint, "", False, beamtime, data_source, token, timeout_ms
    )


def _records(c, stream: str):
    """Every record of ``stream`` as (id, data, meta), by id; ids without a record are gaps."""
    import asapo_consumer

    last = int(c.get_stream_info(stream)["lastId"])
    for i in range(1, last + 1):
        try:
            data, meta = c.get_by_id(i, meta_only=False, stream=stream)
        except asapo_consumer.AsapoStreamFinishedError:
            break
        except (asapo_consumer.AsapoEndOfStreamError, asapo_consumer.AsapoNoDataError):
            continue  # an id whose input became an error record (sent to another output)
        yield i, np.asarray(data).view(np.uint8).reshape(-1), meta


def load_asapo(
    endpoint: str,
    beamtime: str,
    data_source: str,
    stream: str,
    token: str = "",
    timeout_ms: int = 2000,
) -> Results:
    """Load one output stream of the ASAPO sink as numpy arrays with axes, units, lineage.

    Parameters
    ----------
    endpoint, beamtime, data_source, token : str
        Where the sink wrote (its ``endpoint``, ``beamtime``, ``data_source``, ``token``).
    stream : str
        The output stream's name.
    """
    c = _consumer(endpoint, beamtime, data_source, token, timeout_ms)
    ids: list[int] = []
    rows: dict[str, list[np.ndarray]] = {}
    lineage: dict[str, list[Any]] = {k: [] for k in ("name", "timestamp", "run", "config_hash")}
    errors: dict[str, list[Any]] = {}
    layout: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for i, data, meta in _records(c, stream):
        user = meta.get("meta") or {}
        lin = user.get("lineage", {})
        run = lin.get("run", "")
        runs.setdefault(
            run,
            {
                "run_name": run,
                "config_hash": lin.get("config_hash", ""),
                "result_hash": lin.get("result_hash", ""),
                "records": 0,
            },
        )
        runs[run]["records"] += 1
        if "error" in user:
            for k, v in user["error"].items():
                errors.setdefault(k, []).append(v)
            continue
        ids.append(i)
        lineage["name"].append((lin.get("input_names") or [meta.get("name", "")])[0])
        lineage["timestamp"].append(meta.get("timestamp", 0) / 1e9)
        lineage["run"].append(run)
        lineage["config_hash"].append(lin.get("config_hash", ""))
        for a in user.get("arrays", []):
            layout.setdefault(a["name"], a)
            n = int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
            raw = data[a["offset"] : a["offset"] + n]
            rows.setdefault(a["name"], []).append(raw.view(a["dtype"]).reshape(a["shape"]))
    out = Results(
        origin=f"asapo://{endpoint}/{beamtime}/{data_source}",
        stream=stream,
        message_id=np.array(ids, dtype=np.int64),
    )
    axes = {a["axis"] for a in layout.values() if a.get("axis") in layout}
    for name, values in rows.items():
        arr = np.stack(values)
        if name in axes:
            same = all(np.array_equal(arr[0], v) for v in arr[1:])
            out.axes[name] = arr[0] if same else arr
        else:
            out.arrays[name] = arr
        a = layout[name]
        if a.get("unit"):
            out.units[name] = a["unit"]
        if a.get("axis") in layout:
            out.axis_of[name] = a["axis"]
        if a.get("errors") in layout:
            out.errors_of[name] = a["errors"]
    out.lineage = {
        k: np.array(v, dtype=object if k != "timestamp" else np.float64) for k, v in lineage.items()
    }
    out.errors = {k: np.array(v) for k, v in errors.items()}
    out.runs = list(runs.values())
    hashes = {r["result_hash"] for r in runs.values()}
    out.result_hash = hashes.pop() if len(hashes) == 1 else ""
    return out


def describe_asapo(
    endpoint: str, beamtime: str, data_source: str, token: str = "", timeout_ms: int = 2000
) -> dict[str, Any]:
    """What the output streams of one data source hold: records, ids, errors, runs, hashes."""
    c = _consumer(endpoint, beamtime, data_source, token, timeout_ms)
    doc: dict[str, Any] = {"origin": f"asapo://{endpoint}/{beamtime}/{data_source}", "streams": []}
    for s in c.get_stream_list(from_stream="", filter="all", detailed=True):
        ids, errors, runs, hashes = [], 0, Counter(), Counter()
        outputs: dict[str, Any] = {}
        for i, _data, meta in _records(c, s["name"]):
            user = meta.get("meta") or {}
            lin = user.get("lineage", {})
            runs[lin.get("run", "")] += 1
            hashes[lin.get("result_hash", "")] += 1
            if "error" in user:
                errors += 1
                continue
            ids.append(i)
            for a in user.get("arrays", []):
                outputs.setdefault(a["name"], {"shape": a["shape"], "units": a.get("unit", "")})
        doc["streams"].append(
            {
                "stream": s["name"],
                "rows": len(ids),
                "first_id": min(ids) if ids else None,
                "last_id": max(ids) if ids else None,
                "unique_ids": len(set(ids)),
                "errors": errors,
                "finished": bool(s.get("finished", False)),
                "next_stream": s.get("nextStream", ""),
                "outputs": outputs,
                "runs": [{"run_name": r, "records": n} for r, n in runs.items()],
                "result_hashes": dict(hashes),
            }
        )
    return doc
