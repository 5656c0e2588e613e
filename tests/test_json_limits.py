"""Nesting depth of raw JSON, judged before parsing (gateway_project.json_limits)."""
import json

import pytest

from gateway_project.json_limits import TooDeep, check_depth, loads_bounded, nesting_depth


@pytest.mark.parametrize("raw", [b'{"a": [1, {"b": []}]}', '{"a": [1, {"b": []}]}'])
def test_depth_of_bytes_and_text(raw):
    assert nesting_depth(raw) == 4 and nesting_depth(raw, stop_above=1) == 2


def test_brackets_inside_strings_do_not_count():
    raw = json.dumps({"text": "[[[[{{{{" * 100, "quote": 'say \\"[[[\\"'})
    assert nesting_depth(raw) == 1
    assert loads_bounded(raw)["text"].startswith("[[[[")


def test_a_document_past_the_limit_is_refused_before_parsing(settings):
    settings.GATEWAY_JSON_MAX_DEPTH = 8
    check_depth("[" * 8 + "]" * 8)
    with pytest.raises(TooDeep):
        check_depth("[" * 9 + "]" * 9)
    with pytest.raises(ValueError):  # callers catching bad JSON catch this too
        loads_bounded("[" * 5000 + "]" * 5000)
