"""The plug-in contract: everything a source, kernel or sink author imports from shmpipe."""

from shmpipe.api.detector import RunDetector
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, NoParams, SetupContext
from shmpipe.api.message import Message, PartReader, StreamFinished, payload_bytes
from shmpipe.api.params import ParamError
from shmpipe.api.reducer import Reducer, ReducerParams
from shmpipe.api.sink import ErrorRecord, Record, ReducedRecord, ReducerInfo, RunInfo, Sink
from shmpipe.api.source import (
    Acknowledger,
    EndOfSource,
    Source,
    SourceConfigError,
    SourceLayout,
)

__all__ = [
    "Acknowledger",
    "ArraySpec",
    "EndOfSource",
    "ErrorRecord",
    "Frame",
    "Kernel",
    "Message",
    "NoParams",
    "ParamError",
    "PartReader",
    "Record",
    "ReducedRecord",
    "Reducer",
    "ReducerInfo",
    "ReducerParams",
    "RunDetector",
    "RunInfo",
    "SetupContext",
    "Sink",
    "Source",
    "SourceConfigError",
    "SourceLayout",
    "StreamFinished",
    "payload_bytes",
]
