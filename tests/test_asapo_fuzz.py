"""Property-based fuzzing of the ASAPO service's two inputs: the receiver's request headers
and the broker's routes. Bounded (few examples, socket timeouts) so the suite stays fast;
loopback only. Each property: the service answers in bounded time with a well-formed
answer (never a 5xx, never an internal error), and keeps serving the real protocol after."""

from __future__ import annotations

import logging
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmpipe.asapo import AsapoService
from shmpipe.asapo.limits import Limits
from shmpipe.asapo.protocol import RESPONSE_HEADER, NetworkError, Opcode
from tests import asapo_wire as wire

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=150,
    deadline=None,  # network round trips on a shared 2-core machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMITS = Limits(max_payload_bytes=1 << 16, max_meta_bytes=1 << 12, idle_timeout_s=5.0)
KNOWN_ERRORS = {int(e) for e in NetworkError} - {NetworkError.INTERNAL}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with AsapoService(
        data_dir=tmp_path_factory.mktemp("fuzz"), tokens={"tok": ["bt"]}, limits=LIMITS
    ) as svc:
        yield svc


@pytest.fixture
def no_internal_errors(caplog):
    caplog.set_level(logging.WARNING, logger="shmpipe")
    yield caplog
    bad = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR or "ended by" in r.getMessage()
    ]
    assert not bad, bad


def _still_serves(service: AsapoService) -> None:
    with wire.connect(service.receiver_address) as sock:
        assert wire.authorize(sock, "bt", "src", "tok").error == NetworkError.NO_ERROR
    status, _ = wire.http(service.server_name, "GET", "/asapo-discovery/v0.1/version")
    assert status == 200


def _exchange(address: str, data: bytes, authorized: bool) -> bytes:
    """Send ``data`` (after a valid op 7 when ``authorized``), end our side, read to EOF."""
    with wire.connect(address, timeout=10) as sock:
        if authorized:
            assert wire.authorize(sock, "bt", "src", "tok").error == NetworkError.NO_ERROR
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the service already answered and closed: fine
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out  # a timeout here raises: the service hung on a request


u64 = st.one_of(
    st.integers(0, 16), st.integers(0, 1 << 20), st.integers(0, (1 << 64) - 1),
    st.sampled_from([(1 << 62) - 2, (1 << 62) - 1, 1 << 63, (1 << 64) - 1]),
)  # fmt: skip
ops = st.one_of(st.sampled_from([int(o) for o in Opcode]), st.integers(0, 255))
text = st.text(st.characters(codec="utf-8"), max_size=40)


@st.composite
def requests(draw) -> bytes:
    """One header (valid field by field, hostile in value) plus whatever follows it."""
    meta_size, data_size = draw(u64), draw(u64)
    raw = wire.header(
        draw(ops),
        draw(u64),
        data_size,
        meta_size,
        (draw(st.integers(0, 15) | u64), draw(u64), draw(u64)),
        draw(text | st.sampled_from([".", "..", "../x", "/etc/passwd", ".asapo/x", "a/../../b"])),
        draw(text),
        draw(st.sampled_from(["v0.7", "v0.1", "", "v9.9"])),
    )[:2120]
    tail = draw(st.binary(max_size=256) | st.sampled_from([b"{}", b"[]", b"null", b"[" * 200]))
    return raw + tail


@FUZZ
@given(data=requests(), authorized=st.booleans())
def test_receiver_answers_any_header(service, no_internal_errors, data, authorized):
    out = _exchange(service.receiver_address, data, authorized)
    # answers only (no payload is ever served to a fuzzed op 6), each a well-formed response
    assert len(out) % RESPONSE_HEADER.size == 0
    for i in range(0, len(out), RESPONSE_HEADER.size):
        _op, error, _text = RESPONSE_HEADER.unpack(out[i : i + RESPONSE_HEADER.size])
        assert error in KNOWN_ERRORS


@FUZZ
@given(data=st.binary(min_size=0, max_size=4300))
def test_receiver_survives_raw_bytes(service, no_internal_errors, data):
    out = _exchange(service.receiver_address, data, authorized=False)
    assert len(out) % RESPONSE_HEADER.size == 0


segment = st.one_of(
    st.sampled_from(
        ["v0.7", "beamtime", "bt", "src", "s", "0", "g", "next", "last", "nacks", "lastack",
         "size", "meta", "streams", "sources", "delete", "persist", "resetcounter", "creategroup",
         "asapo-discovery", "v0.1", "asapo-receiver", "version", "asapo-authorizer", "v0.2",
         "folder", "transfer", "1", str(1 << 63), "-1", "..", "%00", ""]
    ),
    text,
)  # fmt: skip
query_key = st.sampled_from(
    ["token", "from", "to", "id_key", "dataset", "minsize", "value", "delay_ms", "resend_nacks",
     "resend_attempts", "filter", "single", "last", "incomplete", "protocol", "sizeonly"]
)  # fmt: skip
query_value = st.one_of(
    st.sampled_from(["tok", "true", "false", "0", "1", "-1", "abc", str(1 << 63), "1e9", ""]),
    text,
)  # fmt: skip
bodies = st.one_of(
    st.none(),
    st.sampled_from([b"{}", b"[]", b"null", b'{"Op":"ackmessage"}', b'{"Op":"negackmessage"}',
                     b'{"Op":"negackmessage","Params":{"DelayMs":-5}}', b'{"FileName":"."}',
                     b'{"Folder":"","BeamtimeId":"bt","Token":"tok"}', b"[" * 3000,
                     b'{"Op":"\\ud800"}',
                     b'{"Folder":"\\udfff","BeamtimeId":"\\ud800","Token":"tok"}']),
    st.binary(max_size=200),
)  # fmt: skip


# most requests aimed at the broker proper, with a valid token, so routes are reached
known_rest = st.sampled_from(
    [["g", "next"], ["0", "last"], ["g", "groupedlast"], ["g", "nacks"], ["g", "lastack"],
     ["g", "resetcounter"], ["g", "1"], ["0", "1"], ["g", str(1 << 63)], ["size"], ["streams"],
     ["sources"], ["delete"], ["persist"], ["0", "meta", "0"], ["0", "meta", "1"],
     ["g", "querymessages"]]
)  # fmt: skip
beamtime_route = st.tuples(
    st.just(["v0.7", "beamtime"]),
    st.lists(st.sampled_from(["bt", "src", "s", "0", "g"]) | segment, min_size=3, max_size=3),
    known_rest | st.lists(segment, min_size=0, max_size=4),
).map(lambda t: t[0] + t[1] + t[2])


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    parts=st.lists(segment, min_size=0, max_size=8) | beamtime_route,
    query=st.tuples(
        st.just("tok") | query_value, st.dictionaries(query_key, query_value, max_size=5)
    ).map(lambda t: {**t[1], "token": t[0]})
    | st.dictionaries(query_key, query_value, max_size=6),
    body=bodies,
    cookie=st.sampled_from(["", "Authorization=Bearer x", "Authorization=Bearer "]),
)
def test_broker_routes_answer_any_request_with_a_client_error_at_worst(
    service, no_internal_errors, method, parts, query, body, cookie
):
    path = "/" + "/".join(quote(p, safe="") for p in parts)
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query.items())
    headers = {"Cookie": cookie} if cookie else {}
    status, answer = wire.http(service.server_name, method, path, body, headers)
    assert status < 500, (method, path, body, status, answer)
    assert b"Traceback" not in answer


def test_service_still_serves_after_fuzzing(service):
    _still_serves(service)
