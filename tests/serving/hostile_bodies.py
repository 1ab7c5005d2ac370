"""Request parts a hostile client sends, shared by the tests of both servers and the wire format."""

import base64
import io

import numpy as np
from PIL import Image

DEEP_JSON = "[" * 100_000  # past the JSON parser's recursion limit


def png_that_pil_reads_as_a_syntax_error() -> str:
    """Base64 of a PNG whose second IDAT chunk has a corrupt type: PIL raises SyntaxError while decoding it."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # > one 64 kB IDAT chunk
    Image.fromarray(noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    second_chunk = data.index(b"IDAT", data.index(b"IDAT") + 4)
    return base64.b64encode(data[:second_chunk] + b"\x00\x01\x02\x03" + data[second_chunk + 4:]).decode("ascii")


def png_of_size(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (255, 255, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
