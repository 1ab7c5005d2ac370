"""The size limit of one request body, shared by the wire format and the servers' HTTP front ends (no torch
import)."""

from __future__ import annotations

from imagpose.errors import InvalidArgumentError

MAX_REQUEST_BYTES = 64 * 2**20  # one request's JSON: 16 views of 1024x768 PNGs fit; as Triton's default input cap


class RequestTooLargeError(InvalidArgumentError):
    """A request body over :data:`MAX_REQUEST_BYTES` (HTTP 413)."""

    def __init__(self, size: int):
        super().__init__(f"The request is {size / 2**20:.1f} MiB, over the {MAX_REQUEST_BYTES // 2**20} MiB a request "
                         "can be; send smaller images (they are resized to the tile size anyway).")
