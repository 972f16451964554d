"""What is there to process: the data sources and streams of a followed beamtime, asked of
ASAPO with the real consumer client."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("shmpipe.serve")


def _consumer(endpoint: str, beamtime: str, data_source: str, token: str):
    import asapo_consumer

    return asapo_consumer.create_consumer(endpoint, "", False, beamtime, data_source, token, 2000)


def data_sources(endpoint: str, beamtime: str, token: str) -> tuple[list[str], str]:
    """The data sources ASAPO lists for ``beamtime``, and why it could not (``""``: it could).

    A wrong token, an unknown beamtime or a service that is down would otherwise look like a
    beamtime without data; the reason is shown in the API and on the page.
    """
    import asapo_consumer

    try:
        return list(_consumer(endpoint, beamtime, "", token).get_source_list()), ""
    except asapo_consumer.AsapoConsumerError as exc:
        log.debug("cannot list the data sources of %s: %s", beamtime, exc)
        return [], f"{type(exc).__name__}: {exc}"


def streams(endpoint: str, beamtime: str, data_source: str, token: str) -> list[str] | None:
    """The streams of one data source, oldest first; None when ASAPO cannot say now."""
    import asapo_consumer

    try:
        listed = _consumer(endpoint, beamtime, data_source, token).get_stream_list(
            from_stream="", filter="all", detailed=False
        )
    except asapo_consumer.AsapoConsumerError as exc:
        log.debug("cannot list the streams of %s/%s: %s", beamtime, data_source, exc)
        return None
    return [s["name"] for s in listed]


def is_output(data_source: str, outputs: set[str]) -> bool:
    """Whether ``data_source`` is written by a recipe (``azint``, or a version ``azint-r2``):
    a pipeline's results are never taken as another pipeline's input."""
    return any(
        data_source == o or re.fullmatch(re.escape(o) + r"-r\d+", data_source) for o in outputs
    )
