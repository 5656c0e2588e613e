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

# Outside strings, the characters that matter: brackets and the quote that opens a string.
_OUTSIDE_BYTES = re.compile(rb'[\[\]{}"]')
_OUTSIDE_TEXT = re.compile(r'[\[\]{}"]')
# The rest of a string after its opening quote, through its closing quote. Possessive, so an
# unclosed string is given up in one pass (no backtracking), and strings are never rescanned.
_STRING_REST_BYTES = re.compile(rb'(?:[^"\\]++|\\.)*+"', re.DOTALL)
_STRING_REST_TEXT = re.compile(r'(?:[^"\\]++|\\.)*+"', re.DOTALL)


class TooDeep(ValueError):
    """The document nests deeper than allowed (a ValueError: callers treat it as bad JSON)."""


def nesting_depth(raw: bytes | str, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of ``raw`` outside strings; once past ``stop_above`` the scan
    stops and returns the depth reached. Unbalanced or invalid text gives a number all the same
    (the parser refuses such text afterwards). One pass over ``raw``: time linear in its length."""
    text_mode = isinstance(raw, str)
    outside, string_rest = (_OUTSIDE_TEXT, _STRING_REST_TEXT) if text_mode else (_OUTSIDE_BYTES, _STRING_REST_BYTES)
    quote, opens = ('"', ("[", "{")) if text_mode else (b'"', (b"[", b"{"))
    depth = deepest = pos = 0
    while (found := outside.search(raw, pos)) is not None:
        char, pos = found.group(), found.end()
        if char == quote:
            if (string := string_rest.match(raw, pos)) is None:
                break  # an unclosed string runs to the end: no bracket after it counts
            pos = string.end()
        elif char in opens:
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
    if isinstance(raw, bytes | bytearray) and (encoding := json.detect_encoding(raw)) not in ("utf-8", "utf-8-sig"):
        # json.loads(bytes) reads UTF-16 and UTF-32 too, decoding them so (its own detect_encoding):
        # the scan must read the same characters, or a UTF-16 quote byte hides the brackets after it.
        try:
            raw = raw.decode(encoding, "surrogatepass")
        except UnicodeDecodeError:
            return  # the parser refuses it as well
    text_mode = isinstance(raw, str)
    opening = raw.count("[" if text_mode else b"[") + raw.count("{" if text_mode else b"{")
    if opening > limit and nesting_depth(raw, stop_above=limit) > limit:
        raise TooDeep(f"The JSON nests deeper than {limit} levels.")


def loads_bounded(raw: bytes | str):
    """``json.loads`` after ``check_depth``; raises ValueError (TooDeep, JSONDecodeError), or
    TypeError for what is not text, as json.loads does."""
    if not isinstance(raw, str | bytes | bytearray):
        raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(raw).__name__}")
    check_depth(raw)
    try:
        return json.loads(raw)
    except RecursionError as exc:  # a second line of defence: the limit is far below the interpreter's
        raise TooDeep("The JSON nests too deeply.") from exc
