"""Errors the agent raises on purpose; the servicer maps each class to one gRPC status code."""

from __future__ import annotations

from skyinfer.errors import InputError, SkyinferError


class UnknownModelError(InputError):
    """The model id is not loaded on this node (NOT_FOUND)."""


class ModelExistsError(InputError):
    """A different model is already loaded under this id (ALREADY_EXISTS)."""


class LimitError(InputError):
    """A size, memory or count limit of the node would be exceeded (RESOURCE_EXHAUSTED)."""


class LinkDownError(SkyinferError):
    """The node's link is down, so a result cannot be delivered now (UNAVAILABLE)."""
