"""Running one tool call a model asked for: look up, check permission, validate, run, log."""
from __future__ import annotations

import json
import logging
import time

import jsonschema
from django.conf import settings

from apps.identities.access import tool_permitted

from ..models import ToolCall
from . import ToolContext, ToolFailed, registered_tool

logger = logging.getLogger(__name__)


def run_tool_call(message, call: dict, *, allowed: dict, step: int) -> str:
    """The content of the ``tool`` message answering ``call`` (an OpenAI tool_calls entry).

    ``allowed`` maps slug → Tool row for the tools the agent may call. The sender's permission is
    checked here, at execution, whatever the model was offered: a refusal runs nothing, tells the
    model so, and is audited. Every call is logged as a ToolCall row. Never raises for bad input.
    """
    function = call.get("function") or {}
    name = str(function.get("name") or "")[:100]
    raw_args = function.get("arguments") or "{}"
    tool = allowed.get(name)
    code = registered_tool(name) if tool is not None and tool.enabled else None
    log = dict(message=message, user=message.sender, tool=tool, name=name, step=step, arguments=raw_args[:4000])
    started = time.monotonic()

    def done(status: str, content: str) -> str:
        content = content[: settings.GATEWAY_TOOL_RESULT_MAX_CHARS]
        ToolCall.objects.create(**log, status=status, result=content,
                                latency_ms=int((time.monotonic() - started) * 1000))
        logger.info("tool call", extra={"tool": name, "tool_status": status, "step": step})
        return content

    if code is None:
        return done(ToolCall.Status.UNKNOWN, f"Error: there is no tool named {name!r} available.")
    if not tool_permitted(user=message.sender, tool=tool, message=message):  # audits the refusal
        return done(ToolCall.Status.REFUSED,
                    f"Error: the user is not permitted to use the tool {name!r}. It was not run.")
    try:
        arguments = json.loads(raw_args)
        if not isinstance(arguments, dict):
            raise ValueError("the arguments must be a JSON object")
        jsonschema.validate(arguments, code.parameters)
    except (ValueError, jsonschema.ValidationError) as exc:
        reason = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
        return done(ToolCall.Status.INVALID, f"Error: invalid arguments for {name!r}: {reason}")
    try:
        value = code.func(ToolContext(user=message.sender, message=message), **arguments)
    except ToolFailed as exc:
        return done(ToolCall.Status.ERROR, f"Error: {exc}")
    except Exception:
        logger.exception("tool crashed", extra={"tool": name})
        return done(ToolCall.Status.ERROR, f"Error: the tool {name!r} failed.")
    return done(ToolCall.Status.OK, value if isinstance(value, str) else json.dumps(value, default=str))
