"""The ASAPO-compatible service driven by the real asapo_producer / asapo_consumer 25.3 clients.

One service and one producer serve the whole module (a producer needs about a second before
its first request goes out: it discovers the receiver in a background thread); every test
works on its own stream. Tests that need another configuration start their own service.
"""

from __future__ import annotations

import json
import threading
import warnings

import asapo_consumer as ac
import numpy as np
import pytest

from shmpipe.asapo.testing import asapo_fixture, running_asapo, wait_until

asapo = asapo_fixture(scope="module")

SOURCE = "main"


@pytest.fixture(scope="module")
def producer(asapo):
    prod = asapo.producer(SOURCE)
    yield prod
    prod.wait_requests_finished(5000)


@pytest.fixture
def stream(request) -> str:
    return request.node.name.replace("[", "_").replace("]", "")


def payload(i: int, size: int = 64) -> bytes:
    return (np.arange(size, dtype=np.uint8) + i).tobytes()


def send(producer, stream, ids, size=64, **kwargs) -> None:
    """Send messages ``ids`` to ``stream`` and wait until the service confirmed every one."""
    errors = []
    for i in ids:
        producer.send(
            i,
            f"{stream}/{i}.bin",
            payload(i, size),
            user_meta=json.dumps({"i": i}),
            stream=stream,
            callback=lambda _p, err: err and errors.append(err),
            **kwargs,
        )
    producer.wait_requests_finished(5000)
    assert errors == []


def drain_ids(consumer, group, stream, **kwargs) -> list[int]:
    """get_next until end of stream; the ids in delivery order."""
    ids = []
    while True:
        try:
            _, meta = consumer.get_next(
                group, meta_only=True, stream=stream, ordered=False, **kwargs
            )
        except ac.AsapoEndOfStreamError:
            return ids
        ids.append(meta["_id"])


def test_send_then_get_next_returns_meta_and_data(asapo, producer, stream):
    send(producer, stream, [1, 2, 3])
    consumer = asapo.consumer(SOURCE)
    group = consumer.generate_group_id()
    for i in (1, 2, 3):
        data, meta = consumer.get_next(group, meta_only=False, stream=stream, ordered=False)
        assert meta["_id"] == i and meta["size"] == 64 and meta["stream"] == stream
        assert meta["name"] == f"{stream}/{i}.bin" and meta["meta"] == {"i": i}
        assert data.tobytes() == payload(i)
    with pytest.raises(ac.AsapoEndOfStreamError) as end:
        consumer.get_next(group, meta_only=True, stream=stream, ordered=False)
    assert end.value.id_max == 3
    data, meta = consumer.get_by_id(2, meta_only=False, stream=stream)
    assert meta["_id"] == 2 and data.tobytes() == payload(2)
    _, meta = consumer.get_last(meta_only=True, stream=stream)
    assert meta["_id"] == 3
    # the payloads came from the receiver's cache (op 6), not from the file system
    assert asapo.service.stats["cache_hits"] >= 4


def test_ordered_get_next_waits_on_a_gap_then_skips_it(asapo, producer, stream):
    send(producer, stream, [1, 3])
    consumer = asapo.consumer(SOURCE, timeout_ms=200)
    group = consumer.generate_group_id()
    with warnings.catch_warnings():  # ordered get_next is deprecated: exercised on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        assert consumer.get_next(group, meta_only=True, stream=stream)[1]["_id"] == 1
        with pytest.raises(ac.AsapoNoDataError):
            consumer.get_next(group, meta_only=True, stream=stream)
        assert consumer.get_next(group, meta_only=True, stream=stream)[1]["_id"] == 3
        with pytest.raises(ac.AsapoEndOfStreamError):
            consumer.get_next(group, meta_only=True, stream=stream)


def test_unordered_get_next_follows_arrival_order(asapo, producer, stream):
    send(producer, stream, [5, 2, 9])
    consumer = asapo.consumer(SOURCE)
    assert drain_ids(consumer, consumer.generate_group_id(), stream) == [5, 2, 9]


def test_group_splits_messages_between_consumers_exactly_once(asapo, producer, stream):
    n = 120
    send(producer, stream, range(1, n + 1))
    consumers = [asapo.consumer(SOURCE) for _ in range(4)]
    group = consumers[0].generate_group_id()
    got: list[list[int]] = [[] for _ in consumers]

    def run(k):
        got[k].extend(drain_ids(consumers[k], group, stream))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(consumers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [i for ids in got for i in ids]
    assert sorted(everything) == list(range(1, n + 1))  # each id once, none lost
    # a second group sees every message again, independently of the first
    other = asapo.consumer(SOURCE)
    assert sorted(drain_ids(other, other.generate_group_id(), stream)) == list(range(1, n + 1))


def test_two_consumers_alternating_share_one_pointer(asapo, producer, stream):
    send(producer, stream, range(1, 7))
    first, second = asapo.consumer(SOURCE), asapo.consumer(SOURCE)
    group = first.generate_group_id()
    seen = []
    for k in range(6):
        consumer = first if k % 2 == 0 else second
        _, meta = consumer.get_next(group, meta_only=True, stream=stream, ordered=False)
        seen.append(meta["_id"])
    assert seen == [1, 2, 3, 4, 5, 6]


def test_ack_second_ack_lastack_and_nacks(asapo, producer, stream):
    send(producer, stream, range(1, 6))
    consumer = asapo.consumer(SOURCE)
    group = consumer.generate_group_id()
    drain_ids(consumer, group, stream)
    consumer.acknowledge(group, 2, stream=stream)
    consumer.acknowledge(group, 4, stream=stream)
    with pytest.raises(ac.AsapoWrongInputError):
        consumer.acknowledge(group, 2, stream=stream)
    with warnings.catch_warnings():  # nacks/lastack queries are deprecated in 25.3
        warnings.simplefilter("ignore", DeprecationWarning)
        assert consumer.get_last_acknowledged_message(group, stream=stream) == 4
        assert list(consumer.get_unacknowledged_messages(group, stream=stream)) == [1, 3, 5]
        assert list(
            consumer.get_unacknowledged_messages(group, from_id=2, to_id=4, stream=stream)
        ) == [3]
        other = consumer.generate_group_id()  # acks are per group; "none" is reported as
        with pytest.raises(ac.AsapoNoDataError):  # no data by the client (lastAckId 0)
            consumer.get_last_acknowledged_message(other, stream=stream)


def test_negative_ack_redelivers_once_after_its_delay(asapo, producer, stream):
    send(producer, stream, [1, 2])
    consumer = asapo.consumer(SOURCE, timeout_ms=200)
    group = consumer.generate_group_id()
    assert drain_ids(consumer, group, stream) == [1, 2]
    consumer.neg_acknowledge(group, 1, delay_ms=1000, stream=stream)
    # not before the delay: an immediate get_next finds nothing (the client polls ~300 ms)
    with pytest.raises(ac.AsapoEndOfStreamError):
        consumer.get_next(group, meta_only=True, stream=stream, ordered=False)
    again = wait_until(lambda: drain_ids(consumer, group, stream), timeout=5)
    assert again == [1]
    assert drain_ids(consumer, group, stream) == []  # exactly one redelivery


def test_resend_of_unacknowledged_messages_respects_attempts(asapo, producer, stream):
    send(producer, stream, [1, 2, 3])
    consumer = asapo.consumer(SOURCE, timeout_ms=200)
    # the delay must outlast one drain (the client polls ~300 ms before end of stream), so
    # that each drain sees at most one round of redeliveries
    consumer.set_resend_nacs(True, 800, 2)
    group = consumer.generate_group_id()
    first = [
        consumer.get_next(group, meta_only=True, stream=stream, ordered=False)[1]["_id"]
        for _ in range(3)
    ]
    assert first == [1, 2, 3]
    consumer.acknowledge(group, 2, stream=stream)
    redelivered: list[int] = []

    def two_rounds():
        redelivered.extend(drain_ids(consumer, group, stream))
        return len(redelivered) >= 4

    wait_until(two_rounds, timeout=10)
    # 1 and 3 come back twice each (resend_attempts=2), the acknowledged 2 never
    assert sorted(redelivered) == [1, 1, 3, 3]
    with pytest.raises(ac.AsapoEndOfStreamError):  # attempts spent: no third delivery
        consumer.get_next(group, meta_only=True, stream=stream, ordered=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert list(consumer.get_unacknowledged_messages(group, stream=stream)) == [1, 3]


def test_stream_finished_flag_names_the_next_stream(asapo, producer, stream):
    send(producer, stream, [1, 2])
    producer.send_stream_finished_flag(stream, 2, next_stream=stream + "_next")
    producer.wait_requests_finished(5000)
    consumer = asapo.consumer(SOURCE)
    group = consumer.generate_group_id()
    assert drain_ids_until_finished(consumer, group, stream) == ([1, 2], stream + "_next", 2)
    # every later call (and every other consumer of the group) sees the finish again
    with pytest.raises(ac.AsapoStreamFinishedError):
        asapo.consumer(SOURCE).get_next(group, meta_only=True, stream=stream, ordered=False)
    info = consumer.get_stream_info(stream)
    assert info["finished"] and info["nextStream"] == stream + "_next" and info["lastId"] == 2
    # the ordered (by id) walk ends the same way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ordered_group = consumer.generate_group_id()
        for i in (1, 2):
            assert consumer.get_next(ordered_group, meta_only=True, stream=stream)[1]["_id"] == i
        with pytest.raises(ac.AsapoStreamFinishedError) as fin:
            consumer.get_next(ordered_group, meta_only=True, stream=stream)
    assert fin.value.next_stream == stream + "_next"


def drain_ids_until_finished(consumer, group, stream):
    ids = []
    while True:
        try:
            ids.append(
                consumer.get_next(group, meta_only=True, stream=stream, ordered=False)[1]["_id"]
            )
        except ac.AsapoStreamFinishedError as fin:
            return ids, fin.next_stream, fin.id_max


def test_finished_stream_without_next_stream(asapo, producer, stream):
    send(producer, stream, [1])
    producer.send_stream_finished_flag(stream, 1)
    producer.wait_requests_finished(5000)
    consumer = asapo.consumer(SOURCE)
    ids, next_stream, _ = drain_ids_until_finished(consumer, consumer.generate_group_id(), stream)
    assert ids == [1]
    assert next_stream == "asapo_no_next"  # the producer's marker, passed through as ASAPO does
    assert consumer.get_stream_info(stream)["nextStream"] == ""


def test_stream_list_filters_and_last_stream():
    with running_asapo() as service:
        producer = service.producer("lists")
        for name in ("a", "b", "c"):
            send(producer, name, [1, 2])
        producer.send_stream_finished_flag("b", 2, next_stream="c")
        producer.wait_requests_finished(5000)
        consumer = service.consumer("lists")

        def names(**kwargs):
            return [s["name"] for s in consumer.get_stream_list(detailed=False, **kwargs)]

        assert names(from_stream="", filter="all") == ["a", "b", "c"]
        assert names(from_stream="", filter="finished") == ["b"]
        assert names(from_stream="", filter="unfinished") == ["a", "c"]
        assert names(from_stream="b", filter="all") == ["b", "c"]
        assert consumer.get_last_stream()["name"] == "c"
        assert producer.get_last_stream()["name"] == "c"
        assert producer.get_stream_info("b")["finished"] is True
        assert consumer.get_stream_info("a")["lastId"] == 2
        assert consumer.get_source_list() == ["lists"]


def test_datasets_complete_partial_minsize_and_sizes(asapo, producer, stream):
    errors = []
    for i in (1, 2, 3):
        for part in (1, 2, 3):
            if i == 2 and part == 3:
                continue  # dataset 2 stays incomplete
            producer.send(
                i,
                f"{stream}/{i}_{part}.bin",
                payload(10 * i + part),
                stream=stream,
                dataset=(part, 3),
                callback=lambda _p, e: e and errors.append(e),
            )
    producer.wait_requests_finished(5000)
    assert errors == []
    consumer = asapo.consumer(SOURCE)
    group = consumer.generate_group_id()
    first = consumer.get_next_dataset(group, stream=stream, ordered=False)
    assert first["id"] == 1 and first["expected_size"] == 3
    assert [m["dataset_substream"] for m in first["content"]] == [1, 2, 3]
    assert consumer.retrieve_data(first["content"][1]).tobytes() == payload(12)
    with pytest.raises(ac.AsapoPartialDataError) as partial:
        consumer.get_next_dataset(group, stream=stream, ordered=False)
    assert partial.value.partial_data["id"] == 2
    assert len(partial.value.partial_data["content"]) == 2
    assert consumer.get_next_dataset(group, stream=stream, ordered=False)["id"] == 3
    with pytest.raises(ac.AsapoEndOfStreamError):
        consumer.get_next_dataset(group, stream=stream, ordered=False)
    # min_size accepts the incomplete dataset
    assert len(consumer.get_dataset_by_id(2, stream=stream, min_size=2)["content"]) == 2
    with pytest.raises(ac.AsapoPartialDataError):
        consumer.get_dataset_by_id(2, stream=stream)
    assert consumer.get_last_dataset(stream=stream)["id"] == 3
    assert consumer.get_current_size(stream=stream) == 3
    with warnings.catch_warnings():  # get_current_dataset_count is deprecated in 25.3
        warnings.simplefilter("ignore", DeprecationWarning)
        assert consumer.get_current_dataset_count(stream=stream, include_incomplete=True) == 3
        assert consumer.get_current_dataset_count(stream=stream, include_incomplete=False) == 2


def test_get_next_dataset_waits_for_the_newest_incomplete_dataset(asapo, producer, stream):
    producer.send(1, f"{stream}/1_1.bin", payload(1), stream=stream, dataset=(1, 2))
    producer.wait_requests_finished(5000)
    consumer = asapo.consumer(SOURCE, timeout_ms=200)
    group = consumer.generate_group_id()
    with pytest.raises(ac.AsapoEndOfStreamError):
        consumer.get_next_dataset(group, stream=stream, ordered=False)
    assert consumer.get_next_dataset(group, min_size=1, stream=stream, ordered=False)["id"] == 1
    producer.send(1, f"{stream}/1_2.bin", payload(2), stream=stream, dataset=(2, 2))
    producer.wait_requests_finished(5000)
    other = consumer.generate_group_id()
    assert len(consumer.get_next_dataset(other, stream=stream, ordered=False)["content"]) == 2


def test_beamtime_and_stream_metadata(asapo, producer, stream):
    consumer = asapo.consumer(SOURCE)
    assert consumer.get_stream_meta(stream=stream) is None
    producer.send_beamtime_meta(json.dumps({"energy_keV": 12.4, "sample": "LaB6"}))
    producer.send_stream_meta(json.dumps({"scan": 7}), stream=stream)
    producer.wait_requests_finished(5000)
    assert consumer.get_beamtime_meta()["sample"] == "LaB6"
    assert consumer.get_stream_meta(stream=stream) == {"scan": 7}
    producer.send_stream_meta(json.dumps({"frames": 10}), mode="update", stream=stream)
    producer.wait_requests_finished(5000)
    assert consumer.get_stream_meta(stream=stream) == {"scan": 7, "frames": 10}
    assert producer.get_stream_meta(stream=stream) == {"scan": 7, "frames": 10}


def test_delete_stream_from_consumer_and_producer(asapo, producer, stream):
    send(producer, stream, [1, 2])
    send(producer, stream + "_p", [1])
    consumer = asapo.consumer(SOURCE)
    group = consumer.generate_group_id()
    assert drain_ids(consumer, group, stream) == [1, 2]
    consumer.delete_stream(stream=stream)
    names = [s["name"] for s in consumer.get_stream_list(detailed=False)]
    assert stream not in names and stream + "_p" in names
    with pytest.raises(ac.AsapoWrongInputError):
        consumer.delete_stream(stream=stream)
    consumer.delete_stream(stream=stream, error_on_not_exist=False)
    producer.delete_stream(stream + "_p")
    assert stream + "_p" not in [s["name"] for s in consumer.get_stream_list(detailed=False)]
    # a stream sent again after deletion starts afresh, group pointers included
    send(producer, stream, [1])
    assert drain_ids(consumer, group, stream) == [1]


def test_has_filesystem_consumer_reads_the_data_folder(tmp_path):
    # cache_bytes=0: nothing stays in the receiver "cache", so the client must use the file
    with running_asapo(tmp_path / "asapo", cache_bytes=0) as service:
        producer = service.producer("fs")
        send(producer, "s", [1, 2], size=1000)
        assert (service.beamtime_dir() / "s" / "1.bin").read_bytes() == payload(1, 1000)
        consumer = service.consumer("fs", has_filesystem=True)
        group = consumer.generate_group_id()
        data, meta = consumer.get_next(group, meta_only=False, stream="s", ordered=False)
        assert data.tobytes() == payload(1, 1000)
        assert service.service.stats["file_transfers"] == 0
        # without a file system the client falls back on the file-transfer service
        remote = service.consumer("fs")
        data, meta = remote.get_next(group, meta_only=False, stream="s", ordered=False)
        assert meta["_id"] == 2 and data.tobytes() == payload(2, 1000)
        assert service.service.stats["file_transfers"] == 1
        assert service.service.stats["cache_misses"] >= 1


def test_cache_only_ingest_is_served_from_the_cache_without_a_data_file(tmp_path):
    import asapo_producer as ap

    with running_asapo(tmp_path / "asapo", cache_bytes=0) as service:
        producer = service.producer("cache")
        mode = ap.INGEST_MODE_TRANSFER_DATA | ap.INGEST_MODE_STORE_IN_DATABASE
        send(producer, "s", [1], size=500, ingest_mode=mode)
        assert not (service.beamtime_dir() / "s" / "1.bin").exists()
        consumer = service.consumer("cache")
        data, _ = consumer.get_next(
            consumer.generate_group_id(), meta_only=False, stream="s", ordered=False
        )
        assert data.tobytes() == payload(1, 500)


def test_large_payload_roundtrip(asapo, producer, stream):
    big = np.random.default_rng(1).integers(0, 255, 20 * 1024 * 1024, dtype=np.uint8)
    producer.send(1, f"{stream}/big.bin", big, stream=stream)
    producer.wait_requests_finished(10000)
    consumer = asapo.consumer(SOURCE, timeout_ms=2000)
    data, meta = consumer.get_next(
        consumer.generate_group_id(), meta_only=False, stream=stream, ordered=False
    )
    assert meta["size"] == big.nbytes
    assert np.array_equal(data.view(np.uint8), big)


def test_configured_tokens_reject_wrong_token_and_beamtime():
    import asapo_producer as ap

    tokens = {"good": ["bt_ok"]}
    with running_asapo(tokens=tokens, beamtime="bt_ok", token="good") as service:
        producer = service.producer("auth")
        send(producer, "s", [1])
        assert service.consumer("auth").get_last(meta_only=True, stream="s")[1]["_id"] == 1
        for kwargs in ({"token": "bad"}, {"beamtime": "bt_other"}):
            consumer = service.consumer("auth", **kwargs)
            with pytest.raises(ac.AsapoWrongInputError):
                consumer.get_last(meta_only=True, stream="s")
        errors = []
        bad = service.producer("auth", token="bad")
        bad.send(2, "s/2.bin", payload(2), stream="s", callback=lambda _p, err: errors.append(err))
        bad.wait_requests_finished(5000)
        assert len(errors) == 1 and isinstance(errors[0], ap.AsapoWrongInputError)
        assert service.consumer("auth").get_current_size(stream="s") == 1


def test_duplicate_send_is_a_warning_not_a_second_record(asapo, producer, stream):
    import asapo_producer as ap

    send(producer, stream, [1])
    errors = []
    producer.send(
        1, f"{stream}/1.bin", payload(1), stream=stream, callback=lambda _p, err: errors.append(err)
    )
    producer.wait_requests_finished(5000)
    assert len(errors) == 1 and isinstance(errors[0], ap.AsapoServerWarning)
    assert asapo.consumer(SOURCE).get_current_size(stream=stream) == 1
