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


@pytest.mark.parametrize("raw, depth", [
    (r'["ends in a backslash \\", [1]]', 2),  # the string closes after an escaped backslash
    (r'["a \" quote [[", [[]]]', 3),  # an escaped quote does not close it
    ('[["unclosed [[[[', 2),  # no bracket after an unclosed string counts
    ("[" * 70 + '"' + '\\"' * 50_000, 70),  # the pathological body: one pass, not one per quote
])
def test_strings_are_skipped_whole_escapes_and_all(raw, depth):
    assert nesting_depth(raw) == nesting_depth(raw.encode()) == depth


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"])
def test_bodies_in_the_other_encodings_json_reads_are_checked_as_it_reads_them(settings, encoding):
    """json.loads(bytes) decodes UTF-16 and UTF-32: a character whose UTF-16 bytes hold a quote
    byte (U+0122: 22 01) must not hide the brackets after it."""
    settings.GATEWAY_JSON_MAX_DEPTH = 8
    deep = '{"x": "\u0122", "deep": ' + "[" * 9 + "]" * 9 + "}"
    with pytest.raises(TooDeep):
        check_depth(deep.encode(encoding))
    shallow = json.dumps({"x": "\u0122", "deep": [[1]]}, ensure_ascii=False).encode(encoding)
    check_depth(shallow)
    assert json.loads(shallow)["deep"] == [[1]]


@pytest.mark.parametrize("raw", [5, None, ["[]"], {"a": 1}])
def test_what_is_not_text_is_a_type_error_as_json_loads_says(raw):
    """Callers catch TypeError for a field of the wrong JSON type (Feishu's message content)."""
    with pytest.raises(TypeError):
        json.loads(raw)
    with pytest.raises(TypeError):
        loads_bounded(raw)
