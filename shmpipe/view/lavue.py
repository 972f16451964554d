"""Images for lavue, PETRA III's live viewer, over ZeroMQ (its "ZMQ Stream" source).

lavue subscribes to a PUB socket and reads multipart messages ``[topic, array bytes,
metadata, b"JSON"]`` where the metadata is a JSON object with ``shape``, ``dtype`` and
``name``. In lavue choose the ZMQ Stream source and give ``host:port/shmpipe``.

Orientation: lavue works on arrays indexed (x, y). Its file, Tango and HTTP sources transpose
the (rows, columns) arrays they read; its ZMQ source takes the array as sent (``frombuffer``,
``reshape(shape)``, no net transpose). So an image goes out transposed, shape ``[columns,
rows]``, and lavue shows it as its NeXus file source shows the same dataset: landscape for a
LAMBDA 9M (x 0..4727), not portrait.
"""

from __future__ import annotations

import json

import numpy as np
import zmq

TOPIC = b"shmpipe"


class LavuePublisher:
    """A PUB socket bound at ``address`` (``tcp://*:5555``); sends never block."""

    def __init__(self, address: str, topic: bytes = TOPIC, hwm: int = 2) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)  # a slow lavue drops images, never the view
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.topic = topic

    def send(self, image: np.ndarray, name: str) -> None:
        """Publish one (rows, columns) image under ``name`` (lavue shows it as the image
        name), transposed to lavue's (x, y)."""
        array = np.ascontiguousarray(image.T)
        meta = {"shape": list(array.shape), "dtype": array.dtype.str, "name": name}
        try:
            self.socket.send_multipart(
                [self.topic, array.data, json.dumps(meta).encode(), b"JSON"],
                flags=zmq.NOBLOCK,
                copy=False,
            )
        except zmq.Again:
            pass  # no room (a subscriber that does not keep up): this image is skipped

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
