"""The fake LLM, driven over real HTTP by the real ``openai`` client (no database)."""

import json
import time

import httpx2
import openai
import pytest

from devtools.fake_llm import FakeLLMServer, parse_directives


@pytest.fixture(scope="module")
def server():
    srv = FakeLLMServer()
    srv.start_in_thread()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fresh_counters(server):
    server.reset()  # times= counters and stats must not leak between tests


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
        yield c


def user(text):
    return [{"role": "user", "content": text}]


def test_non_stream_echo_with_usage(client):
    r = client.chat.completions.create(model="fake-qwen", messages=user("hello there"))
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == "fake-qwen"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello there"
    assert choice.finish_reason == "stop"
    # prompt: 2 words + 4 overhead; completion: "Echo:", "hello", "there"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 3, 9)


def test_echo_uses_last_user_message_and_content_parts(client):
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Echo: first"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "part"}],
        },
    ]
    r = client.chat.completions.create(model="any-model-name", messages=messages)
    assert r.choices[0].message.content == "Echo: second part"
    assert r.model == "any-model-name"


def test_stream_reassembles_and_reports_usage(client):
    text = "the quick brown fox"
    plain = client.chat.completions.create(model="fake-gpt", messages=user(text))
    chunks = list(
        client.chat.completions.create(
            model="fake-gpt",
            messages=user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert deltas == ["Echo: ", "the ", "quick ", "brown ", "fox"]  # one word per chunk
    assert "".join(deltas) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="fake-gpt", messages=user("hi"), stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices and c.usage is None for c in chunks)


def test_stream_wire_format_is_sse_ending_with_done(server):
    payload = {
        "model": "fake-gpt",
        "messages": user("wire"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx2.post(f"{server.base_url}/chat/completions", json=payload)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake-gpt", "fake-qwen", "fake-glm"]
    assert all(m.owned_by == "fake" and m.object == "model" for m in models.data)


def test_reply_and_delay_directives(client):
    started = time.perf_counter()
    r = client.chat.completions.create(model="fake-gpt", messages=user("ignored [[delay:0.2]] [[reply:exactly  this]]"))
    assert time.perf_counter() - started >= 0.2
    assert r.choices[0].message.content == "exactly  this"


def test_directives_are_stripped_from_echo():
    text, found = parse_directives('a [[delay:0.5]] b [[fail:503 times=2]][[tool:t {"x": [[1]]}]]')
    assert text == "a b"
    assert found.delay == 0.5
    assert [(f.status, f.times, f.model) for f in found.fails] == [(503, 2, None)]
    assert found.tools == [("t", '{"x": [[1]]}', False)]


def test_scripted_500_raises_internal_server_error(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-gpt", messages=user("boom [[fail:500]]"))
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"
    assert "fail:500" in info.value.body["message"]


def test_scripted_429_raises_rate_limit_error_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-gpt", messages=user("slow down [[fail:429]]"))
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"


def test_fail_times_fails_first_n_requests_then_succeeds(client):
    msgs = user("flaky [[fail:503 times=2]]")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="fake-gpt", messages=msgs)
        assert info.value.status_code == 503
    r = client.chat.completions.create(model="fake-gpt", messages=msgs)
    assert r.choices[0].message.content == "Echo: flaky"
    # Another conversation (different first user message) has its own counter.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-gpt", messages=[*user("other chat"), *msgs])


def test_fail_times_is_absorbed_by_client_retries(server):
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=1) as retrying:
        r = retrying.chat.completions.create(model="fake-gpt", messages=user("retry me [[fail:500 times=1]]"))
    assert r.choices[0].message.content == "Echo: retry me"
    assert server.stats()["requests"] == 2


def test_fail_model_only_fails_that_model(client):
    msgs = user("route [[fail:500 model=fake-a]]")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-a", messages=msgs)
    r = client.chat.completions.create(model="fake-b", messages=msgs)
    assert r.choices[0].message.content == "Echo: route"


def test_truncated_stream_raises_connection_error_without_finish(client):
    received = []
    stream = client.chat.completions.create(
        model="fake-gpt",
        messages=user("one two three four five six [[truncate]]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    # The body stops mid chunked-encoding: the client raises, it does not end quietly.
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert received[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in received)
    assert text == "Echo: one two "
    assert all(c.choices[0].finish_reason is None for c in received)


def test_truncated_json_is_a_200_with_invalid_body(client, server):
    payload = {"model": "fake-gpt", "messages": user("cut [[truncate]]")}
    raw = httpx2.post(f"{server.base_url}/chat/completions", json=payload)
    assert raw.status_code == 200
    with pytest.raises(ValueError):
        json.loads(raw.content)
    # The openai client surfaces it as the raw decoding error, not an openai.APIError.
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(**payload)


def test_tool_call_round_trip(client):
    messages = user('weather? [[tool:get_weather {"city": "Paris"}]]')
    first = client.chat.completions.create(model="fake-glm", messages=messages)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = client.chat.completions.create(model="fake-glm", messages=messages)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool get_weather said: sunny, 21C"


def test_several_tool_directives_make_parallel_calls_and_stream(client):
    text = 'go [[tool:a {"n": 1}]] [[tool:b]]'
    r = client.chat.completions.create(model="fake-gpt", messages=user(text))
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["a", "b"]

    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(model="fake-gpt", messages=user(text), stream=True):
        for tc in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("a", {"n": 1}),
        ("b", {}),
    ]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_tool_loop_always_asks_again(client):
    messages = user("loop [[tool_loop:search {}]]")
    for _ in range(3):
        r = client.chat.completions.create(model="fake-gpt", messages=messages)
        assert r.choices[0].finish_reason == "tool_calls"
        call = r.choices[0].message.tool_calls[0]
        messages += [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "nothing"},
        ]


def test_max_tokens_truncates_with_length(client):
    msgs = user("a b c d e f")
    r = client.chat.completions.create(model="fake-gpt", messages=msgs, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "Echo: a b"
    assert r.usage.completion_tokens == 3

    r = client.chat.completions.create(model="fake-gpt", messages=msgs, max_completion_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Echo: a", "length")

    chunks = list(client.chat.completions.create(model="fake-gpt", messages=msgs, max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: a b"
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "fake-gpt"}', "messages"),
        (b'{"model": "fake-gpt", "messages": "hi"}', "messages"),
        (b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "[[fail:abc]]"}]}', None),
    ],
)
def test_malformed_body_is_400_with_openai_error(server, body, param):
    r = httpx2.post(
        f"{server.base_url}/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert server.stats()["requests"] == 0  # malformed requests are not counted


def test_stats_count_requests_and_reset(client, server):
    client.chat.completions.create(model="fake-gpt", messages=user("one"))
    client.chat.completions.create(model="fake-gpt", messages=user("two"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-qwen", messages=user("x [[fail:500]]"))

    stats = httpx2.get(f"{server.base_url.removesuffix('/v1')}/_fake/stats").json()
    assert stats["requests"] == 3
    assert stats["by_model"] == {"fake-gpt": 2, "fake-qwen": 1}
    assert stats["last_request"]["messages"] == user("x [[fail:500]]")
    assert stats == server.stats()

    reset = httpx2.post(f"{server.base_url.removesuffix('/v1')}/_fake/reset")
    assert reset.status_code == 200
    assert server.stats() == {"requests": 0, "by_model": {}, "last_request": None}


def test_slow_directive_spaces_out_chunks(client):
    started = time.perf_counter()
    chunks = list(client.chat.completions.create(model="fake-gpt", messages=user("a b [[slow:0.05]]"), stream=True))
    # role, "Echo: ", "a ", "b", finish, [DONE] -> 5 pauses between 6 writes
    assert time.perf_counter() - started >= 0.25
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_server_options_delay_and_error_rate():
    with FakeLLMServer(delay_ms=100, error_rate=1.0, seed=1) as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        started = time.perf_counter()
        with pytest.raises(openai.InternalServerError, match="error_rate"):
            c.chat.completions.create(model="fake-gpt", messages=user("hi"))
        assert time.perf_counter() - started >= 0.1
    srv.stop()  # idempotent


def test_error_rate_is_seeded():
    def pattern():
        with FakeLLMServer(error_rate=0.5, seed=42) as srv:
            c = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
            outcomes = []
            for _ in range(12):
                try:
                    c.chat.completions.create(model="fake-gpt", messages=user("hi"))
                    outcomes.append("ok")
                except openai.InternalServerError:
                    outcomes.append("500")
            return outcomes

    first = pattern()
    assert first == pattern()
    assert {"ok", "500"} == set(first)


@pytest.mark.asyncio
async def test_async_client_stream(server):
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="fake-gpt",
            messages=user("async hello"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ("Echo: async hello")
    assert chunks[-1].usage.completion_tokens == 3
