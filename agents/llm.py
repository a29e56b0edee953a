"""Model clients an agent version can name in its config ("model": "scripted")."""

from __future__ import annotations

from typing import Any, Protocol


class ModelClient(Protocol):
    name: str

    def complete(self, *, prompt: str, purpose: str, config: dict[str, Any]) -> dict[str, Any]:
        """Return {"output": <JSON>, "tokens_in": int, "tokens_out": int, "cost_eur": float}."""
        ...


_CLIENTS: dict[str, ModelClient] = {}


class UnknownModel(LookupError):
    pass


def register_model(client: ModelClient) -> ModelClient:
    _CLIENTS[client.name] = client
    return client


def get_model(name: str) -> ModelClient:
    try:
        return _CLIENTS[name]
    except KeyError:
        raise UnknownModel(f"no model client named {name!r} is registered") from None
