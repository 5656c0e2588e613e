"""The OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``model`` names an agent. A completion request is one message on the API channel through the same
pipeline as every other (limits, routing, logging) and the same agent run; the view waits for it on
the channel layer like ``POST /api/v1/messages`` with ``wait``. The earlier messages the client
sends become the prompt's history (the gateway keeps no conversation between such requests), the
last one must be the user's. Tools are the agent's own: a request's ``tools`` is refused.

Streaming (``stream: true``) sends OpenAI ``chat.completion.chunk`` events and ``data: [DONE]``.
If the agent's model fails after pieces were streamed and the run falls back to another model, the
pieces already sent cannot be taken back over SSE: the stream ends with an error event (the openai
client raises ``APIError``) and the client retries. Errors are OpenAI-shaped:
``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import json
import time
import uuid

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents.models import Agent
from apps.core.client_ip import client_ip_for_request
from apps.core.errors import (
    AgentFailed,
    AgentUnavailable,
    AnswerReplaced,
    BadRequest,
    ReplyTimeout,
    drf_exception_handler,
    error_from_event,
)
from apps.identities.permissions import api_key_allows_agent, user_can_use_agent
from apps.logs.middleware import note_accepted_message
from apps.routing.router import REQUESTED_AGENT_KEY
from gateway_project.db import database_sync_to_async

from .apis import accept_on_api_channel
from .async_api import ApiIpRulesMixin, AsyncAPIView
from .normalized import storable_text
from .realtime import INBOX_KEY
from .waiters import ReplyWaiter

CLIENT_HISTORY_KEY = "client_history"  # in NormalizedMessage.control, read by the runtime's build_prompt
SAMPLING_KEY = "sampling"  # in NormalizedMessage.control: the request's max_tokens and temperature (agents.model_call)
ROLES = {"system", "developer", "user", "assistant", "tool"}
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 429: "rate_limit_error"}


def text_of(content) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
    return ""


def openai_error_body(code: str, message: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def openai_exception_handler(exc, context):
    """The gateway's errors, reshaped as OpenAI's (the official client reads message and code)."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        error = response.data["error"]
        code = "model_not_found" if response.status_code == 404 and error.get("code") == "not_found" else error["code"]
        response.data = openai_error_body(code, error["message"], response.status_code, getattr(exc, "param", None))
    return response


class ParamError(BadRequest):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class OpenAIErrorsMixin:
    def get_exception_handler(self):
        return openai_exception_handler


def parse_completion_request(body) -> dict:
    """Validate the parts of an OpenAI chat request the gateway uses; raises ParamError."""
    if not isinstance(body, dict):
        raise ParamError(None, "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or not storable_text(model):
        raise ParamError("model", "'model' must name an agent (see GET /v1/models).")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "'messages' must be a non-empty list.")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise ParamError(f"messages[{i}]", f"messages[{i}]: each message needs a role in {sorted(ROLES)}.")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ParamError(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of parts.")
        if not storable_text(text := text_of(content)):
            raise ParamError(f"messages[{i}].content", f"messages[{i}].content: text with NUL characters or "
                                                         "unpaired surrogates cannot be stored.")
        turns.append({"role": m["role"], "content": text})
    last = turns[-1]
    if last["role"] != "user" or not last["content"].strip():
        raise ParamError("messages", "The last message must be the user's, with text content.")
    if len(last["content"]) > settings.GATEWAY_MAX_MESSAGE_CHARS:
        raise ParamError("messages", f"The last message is limited to {settings.GATEWAY_MAX_MESSAGE_CHARS} characters.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ParamError("stream", "'stream' must be a boolean.")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise ParamError("n", "Only n=1 is supported.")
    if body.get("tools") or body.get("functions"):
        raise ParamError("tools", "Tools are configured on the agent; a request cannot bring its own.")
    stream_options = body.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, dict) or not isinstance(stream_options.get("include_usage", False), bool):
        raise ParamError("stream_options", "'stream_options' must be an object; its include_usage a boolean.")
    include_usage = stream_options.get("include_usage", False)
    history = [t for t in turns[:-1] if t["role"] in ("system", "developer", "user", "assistant") and t["content"]]
    return {"model": model.strip(), "text": last["content"], "stream": stream, "include_usage": include_usage,
            "history": history[-settings.GATEWAY_HISTORY_MESSAGES:], "sampling": parse_sampling(body)}


def parse_sampling(body: dict) -> dict:
    """The request's ``max_completion_tokens`` (or the older ``max_tokens``) and ``temperature``,
    checked; the run uses them within the agent's own bound (agents.model_call)."""
    sampling = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParamError(name, f"'{name}' must be a positive integer.")
        sampling.setdefault("max_tokens", value)  # max_completion_tokens, OpenAI's newer name, wins
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise ParamError("temperature", "'temperature' must be a number from 0 to 2.")
        sampling["temperature"] = float(temperature)
    return sampling


class ChatCompletionsApi(OpenAIErrorsMixin, AsyncAPIView):
    """OpenAI chat completions, answered by the agent named in ``model``."""

    @extend_schema(request=dict, responses={200: dict})
    async def post(self, request):
        fields = parse_completion_request(request.data)
        user = request.user
        # The request's model, streaming and earlier turns are the gateway's decisions for this
        # message (``control``), not client metadata: nothing an API client sends can set them.
        message_id = uuid.uuid4()
        waiter = ReplyWaiter(message_id)
        await waiter.__aenter__()  # listen before the message is enqueued
        message = dict(
            id=message_id, user_id=str(user.pk), principal_id=str(user.pk), message=fields["text"],
            control={REQUESTED_AGENT_KEY: fields["model"], "stream": fields["stream"], "openai": True,
                     CLIENT_HISTORY_KEY: fields["history"], SAMPLING_KEY: fields["sampling"],
                     INBOX_KEY: waiter.inbox_name},
        )
        try:
            accepted = await database_sync_to_async(accept_on_api_channel)(
                message, principal=user, api_key=request.auth, client_ip=client_ip_for_request(request))
        except BaseException:
            await waiter.__aexit__(None, None, None)
            raise
        # The completion carries no message id for the request log to read: told here, so its row is
        # linked to this message (not through the client-chosen request id).
        note_accepted_message(request, accepted.message.id)
        completion_id = f"chatcmpl-{accepted.message.id.hex}"
        created = int(time.time())
        if fields["stream"]:
            response = StreamingHttpResponse(
                _sse(waiter, completion_id, created, fields["model"], fields["include_usage"]),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        try:
            event = await waiter.final_event(settings.GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS)
        except TimeoutError:
            raise ReplyTimeout() from None
        finally:
            await waiter.__aexit__(None, None, None)
        if event["type"] == "agent.error":
            raise error_from_event(event)  # a used-up budget is a 429 with Retry-After, as on the messages API
        return Response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": fields["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": event["message"], "refusal": None},
                         "logprobs": None, "finish_reason": event.get("finish_reason") or "stop"}],
            "usage": event["usage"], "system_fingerprint": None,
        })


async def _sse(waiter: ReplyWaiter, completion_id: str, created: int, model: str, include_usage: bool):
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    def error(err) -> str:
        return f"data: {json.dumps(openai_error_body(err.code, err.message, err.status))}\n\n"

    cut_off = AgentFailed("The model's answer was cut off; retry the request.")
    loop_deadline = time.monotonic() + settings.GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS
    sent_text = False
    void = False  # the text sent was taken back as replaced: the message's answer comes from elsewhere
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                event = await waiter.next_event(max(0.0, loop_deadline - time.monotonic()))
            except TimeoutError:
                yield error(ReplyTimeout())
                return
            kind = event["type"]
            if kind == "agent.delta":
                if void:
                    continue  # another run's: the client cannot be shown a fresh answer after the void one
                sent_text = True
                yield chunk({"content": event["delta"]})
            elif kind == "agent.reset":
                if sent_text and event.get("replaced"):
                    void = True  # the person's reply is told to this message too, in either order
                elif sent_text:
                    yield error(cut_off)  # an attempt failed mid-answer
                    return
            elif kind == "agent.error":
                yield error(error_from_event(event))
                return
            elif kind == "agent.reply":
                if sent_text and event.get("by_person"):  # the streamed text is not the answer
                    yield error(AnswerReplaced(f"{AnswerReplaced.default_message} Their answer: {event['message']}"))
                    return
                if void:  # another run answered after this one's text was taken back
                    yield error(cut_off)
                    return
                if not sent_text and event["message"]:
                    yield chunk({"content": event["message"]})  # e.g. a human's reply: not streamed
                yield chunk({}, event.get("finish_reason") or "stop")
                if include_usage:
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': event['usage']})}\n\n"
                yield "data: [DONE]\n\n"
                return
    finally:
        await waiter.__aexit__(None, None, None)


def usable_agents(request, **filters) -> list[Agent]:
    """The enabled agents the caller and their API key may use."""
    return [a for a in Agent.objects.filter(enabled=True, **filters).order_by("slug")
            if user_can_use_agent(request.user, a) and api_key_allows_agent(request.auth, a)]


def model_object(agent: Agent) -> dict:
    return {"id": agent.slug, "object": "model", "created": int(agent.created_at.timestamp()), "owned_by": "gateway"}


class ModelsApi(OpenAIErrorsMixin, ApiIpRulesMixin, APIView):
    """The agents the caller's API key may use, as OpenAI models."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response({"object": "list", "data": [model_object(a) for a in usable_agents(request)]})


class ModelDetailApi(OpenAIErrorsMixin, ApiIpRulesMixin, APIView):
    """One of those models (``client.models.retrieve``); any other name, existing or not, is the
    same 404 ``model_not_found`` the face gives, so agent names are not disclosed."""

    @extend_schema(responses={200: dict})
    def get(self, request, model: str):
        # A name PostgreSQL cannot hold (NUL) names no agent: the same 404, not a query's 500.
        found = usable_agents(request, slug=model) if storable_text(model) else []
        if not found:
            raise AgentUnavailable(model)
        return Response(model_object(found[0]))
