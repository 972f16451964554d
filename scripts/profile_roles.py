"""Sum a py-spy raw profile of a shmpipe run per process role (dispatcher, workers, publisher).

Record a run with every process sampled, then summarise::

    py-spy record --subprocesses --format raw -r 400 -o prof.txt -- \\
        python -m shmpipe run --workers 2 --frames 1000 --sink null --progress off
    python scripts/profile_roles.py prof.txt --top 15

For each role it prints the samples of the functions on the stack (inclusive) and of the
innermost frames (self), which is how the hot spots in docs/performance.md were found.
"""

from __future__ import annotations

import argparse
import collections

ROLES = ("dispatcher_main", "worker_main", "publisher_main", "_warmup_main", "_supervise")


def summarise(path: str) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """Samples per role, per (role, function) on the stack, per (role, innermost line)."""
    per_role: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    innermost: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            role, start = "other", 0
            for i, frame in enumerate(frames):
                for r in ROLES:
                    if frame.startswith(r):
                        role, start = r, i
            per_role[role] += n
            seen = set()
            for frame in frames[start:]:
                key = (role, frame.split(" (")[0])
                if key not in seen:
                    inclusive[key] += n
                    seen.add(key)
            innermost[(role, frames[-1])] += n
    return per_role, inclusive, innermost


def _of(counts: collections.Counter, role: str) -> list[tuple[str, int]]:
    return sorted(((k[1], v) for k, v in counts.items() if k[0] == role), key=lambda r: -r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="py-spy --format raw output")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    per_role, inclusive, innermost = summarise(args.profile)
    for role, total in per_role.most_common():
        print(f"== {role}: {total} samples")
        for name, n in _of(inclusive, role)[: args.top]:
            print(f"  {n:7d} {100 * n / total:5.1f}%  {name}")
        print("  -- innermost")
        for name, n in _of(innermost, role)[: max(5, args.top // 3)]:
            print(f"  {n:7d} {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
