"""JSON from outside, parsed only when its nesting is bounded.

Python's JSON decoder recurses once per ``[`` or ``{``: a body of a few thousand brackets raises
``RecursionError``, which is not a ``ValueError`` (so not "bad JSON" to the code that catches
those), and a document just under the interpreter's limit parses and then breaks whatever walks it
next (validation, ``json.dumps`` into a JSON column). Every entry point (the DRF parser of the
messages API and the OpenAI face, the webhook view, the web chat consumer) checks the nesting
depth of the raw text first, against GATEWAY_JSON_MAX_DEPTH, and refuses deeper documents as
malformed. Leaf module: imports no app.
"""
from __future__ import annotations

import json
import re

from django.conf import settings

# A JSON string: quote, then runs of ordinary characters and escapes, then quote.
_STRING_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_TEXT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS_BYTES = re.compile(rb"[\[\]{}]")
_BRACKETS_TEXT = re.compile(r"[\[\]{}]")


class TooDeep(ValueError):
    """The document nests deeper than allowed (a ValueError: callers treat it as bad JSON)."""


def nesting_depth(raw: bytes | str, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of ``raw`` outside strings; once past ``stop_above`` the scan
    stops and returns the depth reached. Unbalanced or invalid text gives a number all the same
    (the parser refuses such text afterwards)."""
    text_mode = isinstance(raw, str)
    stripped = (_STRING_TEXT if text_mode else _STRING_BYTES).sub("" if text_mode else b"", raw)
    opens = ("[", "{") if text_mode else (b"[", b"{")
    depth = deepest = 0
    for match in (_BRACKETS_TEXT if text_mode else _BRACKETS_BYTES).finditer(stripped):
        if match.group() in opens:
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def check_depth(raw: bytes | str) -> None:
    """Raise TooDeep when ``raw`` nests deeper than GATEWAY_JSON_MAX_DEPTH.

    Cheap where it matters: a document with no more opening brackets than the limit cannot be too
    deep, so the usual small body costs two ``count`` calls and no scan."""
    limit = settings.GATEWAY_JSON_MAX_DEPTH
    text_mode = isinstance(raw, str)
    opening = raw.count("[" if text_mode else b"[") + raw.count("{" if text_mode else b"{")
    if opening > limit and nesting_depth(raw, stop_above=limit) > limit:
        raise TooDeep(f"The JSON nests deeper than {limit} levels.")


def loads_bounded(raw: bytes | str):
    """``json.loads`` after ``check_depth``; raises ValueError (TooDeep, JSONDecodeError)."""
    check_depth(raw)
    try:
        return json.loads(raw)
    except RecursionError as exc:  # a second line of defence: the limit is far below the interpreter's
        raise TooDeep("The JSON nests too deeply.") from exc
