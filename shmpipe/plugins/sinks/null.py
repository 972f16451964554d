"""NullSink: discards results (benchmarks, dry runs); still counts what it saw."""

from __future__ import annotations

from dataclasses import dataclass

from shmpipe.api.sink import ErrorRecord, Record, RunInfo, Sink


@dataclass
class NullParams:
    pass


class NullSink(Sink):
    """``[[sinks]] kind = "null"``."""

    Params = NullParams

    def __init__(self, params: NullParams) -> None:
        super().__init__(params)
        self.records = self.errors = 0

    def write(self, record: Record) -> None:
        self.records += 1

    def write_error(self, error: ErrorRecord) -> None:
        self.errors += 1

    def stored(self, run: RunInfo, published: dict[str, int]) -> list[str]:
        return [
            "nothing: the null sink discards the results "
            "(--sink hdf5 --output 'results_{stream}.h5' stores them)"
        ]
