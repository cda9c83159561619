"""Agent configuration: validation messages name the field; thread budget follows the profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from node_agent.config import AgentConfig, default_intra_op_threads, profile_by_name
from scheduler.types import BUILTIN_PROFILES
from skyinfer.errors import InputError


def _config(**kw: object) -> AgentConfig:
    base = AgentConfig(node_id="FLOCK 3P'-3", profile=BUILTIN_PROFILES["cubesat"], models_dir=Path("m"))
    return replace(base, **kw)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("node_id", "", "node_id: expected a satellite name"),
    ("node_id", "a\nb", "node_id: expected a satellite name"),
    ("max_tensor_bytes", 0, "max_tensor_bytes: must be a positive integer"),
    ("max_tensor_bytes", 10**12, "max_tensor_bytes: must not exceed max_message_bytes"),
    ("intra_op_threads", 0, "intra_op_threads: must be in [1, 256]"),
    ("heartbeat_interval_s", 0.0, "heartbeat_interval_s: must be > 0 s"),
    ("listen", "8080", "listen: expected HOST:PORT"),
    ("scheduler_token", "two words", "scheduler_token: one line"),
])
def test_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(**{field: value})


def test_threads_are_shared_among_slots_and_bounded_by_the_cores() -> None:
    assert default_intra_op_threads(BUILTIN_PROFILES["cubesat"], cores=8) == 8  # 1 slot
    assert default_intra_op_threads(BUILTIN_PROFILES["jetson-orin"], cores=8) == 4  # 2 slots
    assert default_intra_op_threads(BUILTIN_PROFILES["three-body-744tops"], cores=2) == 1  # 4 slots, 2 cores
    import os

    assert _config(intra_op_threads=256).threads == (os.cpu_count() or 1)


def test_defaults_derive_from_the_profile_and_models_dir() -> None:
    c = _config()
    assert c.memory_bytes == BUILTIN_PROFILES["cubesat"].memory_bytes
    assert _config(memory_limit_bytes=1000).memory_bytes == 1000
    assert c.spool_path == Path("m") / ".spool"
    with pytest.raises(InputError, match=r"profile: unknown profile 'pi' \(known: cubesat, jetson-orin"):
        profile_by_name("pi")
