"""Parsing OpenAI chat requests: every malformed body is a ParamError (a 400), never a crash."""
import pytest

from apps.conversations.openai_face import ParamError, parse_completion_request

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("body, param", [
    (None, None),
    ([], None),
    ({"messages": [USER]}, "model"),
    ({"model": ["x"], "messages": [USER]}, "model"),
    ({"model": "a", "messages": "hi"}, "messages"),
    ({"model": "a", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0]"),
    ({"model": "a", "messages": [{"role": {"a": 1}}]}, "messages[0]"),
    ({"model": "a", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}, "messages"),
    ({"model": "a", "messages": [USER], "stream": "yes"}, "stream"),
    ({"model": "a", "messages": [USER], "n": [1]}, "n"),
    ({"model": "a", "messages": [USER], "functions": [{"name": "f"}]}, "tools"),
    ({"model": "a", "messages": [USER], "n": True}, "n"),
    ({"model": "a", "messages": [USER], "stream_options": []}, "stream_options"),
    ({"model": "a", "messages": [USER], "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"model": "a\x00", "messages": [USER]}, "model"),
    ({"model": "a", "messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"model": "a", "messages": [{"role": "system", "content": [{"type": "text", "text": "\x00"}]}, USER]},
     "messages[0].content"),
    ({"model": "a", "messages": [USER], "max_tokens": -1}, "max_tokens"),
    ({"model": "a", "messages": [USER], "max_completion_tokens": "9"}, "max_completion_tokens"),
    ({"model": "a", "messages": [USER], "temperature": float("nan")}, "temperature"),
    ({"model": "a", "messages": [USER], "temperature": False}, "temperature"),
])
def test_malformed_bodies_name_the_bad_parameter(body, param):
    with pytest.raises(ParamError) as info:
        parse_completion_request(body)
    assert info.value.param == param


def test_a_valid_request(settings):
    fields = parse_completion_request({
        "model": " assistant ", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "developer", "content": "terse"}, {"role": "tool", "content": "x"},
                     {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "image_url"}]}],
    })
    assert fields == {"model": "assistant", "text": "hi ", "stream": True, "include_usage": True,
                      "history": [{"role": "developer", "content": "terse"}], "sampling": {}}


@pytest.mark.parametrize("extra, sampling", [
    ({"max_tokens": 50, "temperature": 0}, {"max_tokens": 50, "temperature": 0.0}),
    ({"max_tokens": 50, "max_completion_tokens": 20}, {"max_tokens": 20}),  # the newer name wins
    ({"temperature": 2, "max_tokens": None}, {"temperature": 2.0}),
])
def test_sampling_fields(extra, sampling):
    assert parse_completion_request({"model": "a", "messages": [USER], **extra})["sampling"] == sampling
