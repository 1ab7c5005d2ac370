"""JSON from outside (files, request bodies, server answers) parsed with one rule for hostile nesting; no torch
import, so a server's HTTP front end can use it."""

from __future__ import annotations

import json


def parse_json(text: str | bytes):
    """``json.loads``, with nesting deeper than the interpreter's recursion limit reported as the
    :class:`json.JSONDecodeError` it is to the caller (the standard parser raises RecursionError there), so every
    caller's "not valid JSON" handling covers a hostile ``[[[[...`` too."""
    try:
        return json.loads(text)
    except RecursionError:
        document = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError("nested too deeply (arrays or objects inside each other past the parser's "
                                   "recursion limit)", document, 0) from None
