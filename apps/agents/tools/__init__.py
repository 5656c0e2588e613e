"""The tool registry: Python functions the models may call, each with a JSON schema.

Register a tool with the decorator; its ``Tool`` row (who may use it, on/off) is created by
``tool_sync()`` (run after every migrate)::

    @register_tool("current_time", description="...", parameters={...}, visibility="public")
    def current_time(ctx: ToolContext, *, timezone: str = "UTC") -> dict: ...

A tool receives a ``ToolContext`` (the user it runs for, the message) and its validated arguments
as keywords; it returns anything JSON-serialisable, or raises ``ToolFailed`` with a text the
model may see. Built-ins live in ``builtins.py``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ToolFailed(Exception):
    """A tool could not do what was asked; the message is shown to the model."""


@dataclass(frozen=True)
class ToolContext:
    user: Any  # the sender the tool runs for (permissions were checked before the call)
    message: Any  # the inbound Message being answered


@dataclass(frozen=True)
class RegisteredTool:
    slug: str
    name: str
    description: str
    parameters: dict
    visibility: str
    func: Callable[..., Any]


_registry: dict[str, RegisteredTool] = {}
_builtins_loaded = False


def register_tool(slug: str, *, description: str, parameters: dict, visibility: str = "admin",
                  name: str | None = None) -> Callable:
    """Decorator: make ``func(ctx, **arguments)`` callable by models as ``slug``."""
    def decorate(func: Callable) -> Callable:
        if slug in _registry and _registry[slug].func is not func:
            raise ValueError(f"tool {slug!r} is registered twice")
        _registry[slug] = RegisteredTool(
            slug=slug, name=name or slug.replace("_", " ").capitalize(), description=description,
            parameters=parameters, visibility=visibility, func=func,
        )
        return func
    return decorate


def registered_tool(slug: str) -> RegisteredTool | None:
    _load_builtins()
    return _registry.get(slug)


def registered_tools() -> list[RegisteredTool]:
    _load_builtins()
    return sorted(_registry.values(), key=lambda t: t.slug)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        from . import builtins  # noqa: F401  (registers on import)
        _builtins_loaded = True
