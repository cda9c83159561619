"""The replay sections policy / solver / agents / replay: defaults, values, and mistakes with their location."""

from __future__ import annotations

import pytest

from skyinfer.config import parse_yaml
from skyinfer.errors import InputError
from skyinfer.replay.settings import ReplaySettings, parse_settings


def test_defaults_and_values() -> None:
    assert parse_settings(parse_yaml("name: x\n", "s.yaml")) == ReplaySettings()
    s = parse_settings(parse_yaml("""
policy: {name: greedy, replan_interval: 15m, min_replan_gap: 0}
solver: {time_limit_s: 2.5, workers: 2, seed: 9}
agents: {mode: process, real_tiles_per_job: 3, threads: 2}
replay: {step_s: 30, soc_sample: 2m, czml_step: 1m, track_sats: 5}
""", "s.yaml"))
    assert (s.policy, s.replan_interval_s, s.min_replan_gap_s) == ("greedy", 900.0, 0.0)
    assert (s.time_limit_s, s.workers, s.solver_seed) == (2.5, 2, 9)
    assert (s.agent_mode, s.real_tiles_per_job, s.agent_threads) == ("process", 3, 2)
    assert (s.step_s, s.soc_sample_s, s.czml_step_s, s.track_sats) == (30.0, 120.0, 60.0, 5)
    assert s.with_overrides(policy="bentpipe", agent_mode="inproc").policy == "bentpipe"
    assert parse_settings(parse_yaml("policy: bentpipe\n", "s.yaml")).policy == "bentpipe"


@pytest.mark.parametrize(("text", "expected"), [
    ("policy: fastest\n", "s.yaml:1: policy: expected one of cpsat, greedy, bentpipe"),
    ("policy: {name: cpsat, interval: 5m}\n", "s.yaml:1: policy.interval: unknown key"),
    ("solver: {workers: 0}\n", "s.yaml:1: solver.workers: must be >= 1"),
    ("agents: {mode: docker}\n", "s.yaml:1: agents.mode: expected one of inproc, process"),
    ("replay: {soc_sample: soon}\n", "s.yaml:1: replay.soc_sample: expected a duration"),
])
def test_mistakes_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(InputError) as err:
        parse_settings(parse_yaml(text, "s.yaml"))
    assert str(err.value).startswith(expected), str(err.value)
