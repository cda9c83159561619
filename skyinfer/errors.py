"""The project's exception hierarchy.

Every error a user can cause derives from :class:`InputError`; the CLI turns it
into a one-line message and exit code 2, the gRPC servers into INVALID_ARGUMENT.
"""

from __future__ import annotations


class SkyinferError(Exception):
    """Base of every exception skyinfer raises on purpose."""


class InputError(SkyinferError, ValueError):
    """A user's input is wrong. The message says what and where (``FILE:LINE: field: ...``)."""


class InfeasibleError(SkyinferError):
    """A request is valid but cannot be satisfied (for example no contact before a deadline)."""
