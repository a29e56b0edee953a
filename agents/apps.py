from __future__ import annotations

import importlib

from django.apps import AppConfig
from django.conf import settings


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        # Tools and agent programs register themselves on import; load the configured
        # modules once here so every process (web, worker, beat) knows the same set.
        for module in settings.BATON_AGENT_MODULES:
            importlib.import_module(module)
        # Tools of agents' upstream MCP servers are found by name too (the approval page).
        from agents.mcp.catalog import stored_tool
        from agents.registry import tool_source

        tool_source(stored_tool)
