"""Fixtures for the scheduler tests (defined in scheduler_cases, which tests import by its unique name:
``from conftest import ...`` resolves to whichever conftest pytest imported first)."""

from scheduler_cases import *  # noqa: F403
