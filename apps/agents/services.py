"""Writes for agents and tools."""
from __future__ import annotations

from .models import Tool
from .tools import registered_tools


def tool_sync() -> list[Tool]:
    """One Tool row per registered tool. New rows take the code's defaults; the schema always
    follows the code (it is the function's contract), while staff's name, description,
    visibility and enabled choices are kept."""
    rows = []
    for code in registered_tools():
        tool, created = Tool.objects.get_or_create(slug=code.slug, defaults=dict(
            name=code.name, description=code.description, parameters=code.parameters,
            visibility=code.visibility,
        ))
        if not created and tool.parameters != code.parameters:
            tool.parameters = code.parameters
            tool.save(update_fields=["parameters"])
        rows.append(tool)
    return rows
