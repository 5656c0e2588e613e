"""Route patterns: admin-written regular expressions, run with a time limit.

A pattern like ``^(a|a)*$`` backtracks for ever on ``aaaa…!``; the router runs in the entry point,
so one such rule would hang every message. Patterns run with the ``regex`` package's ``timeout``
(GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS): a search that runs out counts as no match and is logged. At
save, a pattern must compile and must not run out on a few hostile probes, so staff hear about it
at once (see docs/decisions/route-regex.md).
"""
from __future__ import annotations

import logging
from functools import lru_cache

import regex
from django.conf import settings

logger = logging.getLogger(__name__)

# Inputs that make the usual catastrophic shapes ((a+)+, (a|a)*, (\w+\s?)*…) backtrack.
_PROBES = ("a" * 64 + "!", "aA0 _-." * 16 + "\x00", " " * 64 + "!", "0" * 64 + "x")


@lru_cache(maxsize=256)
def compiled(pattern: str) -> regex.Pattern | None:
    try:
        return regex.compile(pattern, regex.IGNORECASE)
    except regex.error:
        return None  # saved before validation existed, or edited in the database: never matches


def pattern_search(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` (searched, any case); False when it runs out of time."""
    found = compiled(pattern)
    if found is None:
        return False
    try:
        return bool(found.search(text, timeout=settings.GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS))
    except TimeoutError:
        logger.warning("route pattern ran out of time; counted as no match", extra={"pattern": pattern[:300]})
        return False


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be saved, or None."""
    try:
        found = regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        return f"Not a valid regular expression: {exc}"
    for probe in _PROBES:
        try:
            found.search(probe, timeout=settings.GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS)
        except TimeoutError:
            return ("This pattern takes too long on some texts (catastrophic backtracking, e.g. nested "
                    "repeats like (a+)+ or (a|a)*). Rewrite it without repeats inside repeats.")
    return None
