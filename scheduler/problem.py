"""The planner's inputs from a scenario file: node profiles, models and jobs.

Reads the ``nodes``, ``models`` and ``jobs`` sections of a scenario (the
orbital sections are read by :mod:`skyinfer.scenario`) and assembles a
:class:`~scheduler.types.Problem` over a contact plan. Every mistake is an
:class:`~skyinfer.errors.InputError` of the form ``FILE:LINE: key.path: what``.

Schema, by example::

    nodes:
      profiles:              # optional custom profiles; built-ins: cubesat, jetson-orin, three-body-744tops
        my-orin:
          base: jetson-orin  # optional: start from this profile (built-in or defined above)
          compute_gflops: 1500
          battery_wh: 150
          resident_models: [cloudmask@1]
          downlink_bps: {default: 160e6, s-band: 2e6}   # or one number for every station class
      assign:                # first match wins; satellites not matched have no compute (and do not relay)
        - {profile: my-orin, satellites: [FLOCK 4X-2, SKYSAT-C1]}
        - {profile: cubesat, pattern: "FLOCK*"}         # fnmatch pattern over satellite names
    models:
      - {id: cloudmask@1, size_bytes: 40MB, sha256: "<64 hex>", memory_bytes: 200MB, gflop_per_inference: 12.5}
      - {id: tiny@1, size_bytes: 1e5, memory_bytes: 1e6, reference_ms: 120, reference_profile: jetson-orin,
         path: models/tiny.onnx}                        # path relative to the scenario file
    jobs:
      - id: j1
        model: cloudmask@1
        priority: 3                  # 1..1000, default 1
        submit: 2023-04-20T00:10:00Z # or +600s / +10m (after the scenario start), or seconds; default start
        deadline: 2h                 # duration after submit, or an absolute UTC time
        input_bytes: 2e8
        output_bytes: 1MB
        tiles: 100                   # inferences, default 1
        source: {capture: {latitude_deg: 48.1, longitude_deg: 11.6, min_elevation_deg: 30}}
        # or {uplink: {station: Svalbard}} | {uplink: {}} (any station) | {onboard: {satellite: FLOCK 4X-2}}
        destination: Svalbard        # optional: the station that must receive the result

Sizes are bytes: a number (``1e5`` and ``40000000`` alike) or a number with a
unit (``kB``, ``MB``, ``GB``, ``TB`` decimal; ``KiB``, ``MiB``, ``GiB``).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import MISSING, fields, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from orbit.contact_plan import ContactPlan
from orbit.types import Constellation, GroundStation
from scheduler.types import (
    BUILTIN_PROFILES,
    MAX_BYTES,
    CaptureSource,
    Job,
    JobSource,
    ModelSpec,
    NodeProfile,
    OnboardSource,
    Problem,
    UplinkSource,
)
from skyinfer.config import Node
from skyinfer.errors import InputError
from skyinfer.timefmt import parse_duration_s, parse_utc

__all__ = [
    "build_problem",
    "parse_jobs",
    "parse_models",
    "parse_node_profiles",
    "profiles_by_name",
]

MODEL_KEYS_REQUIRED = ("id", "size_bytes", "memory_bytes")
MODEL_KEYS_OPTIONAL = ("sha256", "gflop_per_inference", "reference_ms", "reference_profile", "path")
PROFILE_NUMBER_KEYS = ("compute_gflops", "active_power_w", "idle_power_w", "battery_wh", "solar_w", "min_soc",
                       "isl_bps", "initial_soc")
PROFILE_BYTES_KEYS = ("memory_bytes", "storage_bytes")
PROFILE_KEYS = ("base", "slots", "uplink_bps", "downlink_bps", "resident_models", *PROFILE_NUMBER_KEYS,
                *PROFILE_BYTES_KEYS)
JOB_KEYS_REQUIRED = ("id", "model", "deadline", "input_bytes", "output_bytes", "source")
JOB_KEYS_OPTIONAL = ("priority", "submit", "tiles", "destination")

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKMGTP]i?B|B)?\s*$")
_SIZE_UNIT = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
              "KiB": 2**10, "kiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


class HasRoot(Protocol):
    """A parsed scenario (:class:`skyinfer.scenario.Scenario`): only its document tree is needed here."""

    @property
    def root(self) -> Node: ...


# -- scalar helpers -----------------------------------------------------------------------------
def _number(node: Node, *, min_value: float | None = None, max_value: float | None = None) -> float:
    """A number; numeric strings are accepted because YAML 1.1 reads ``1e5`` as a string."""
    v = node.value
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise node.error(f"expected a number, got {node.value!r}") from None
        node = Node(v, node.path, node.file, node.line)
    return node.as_float(min_value=min_value, max_value=max_value)


def parse_size_bytes(node: Node, *, min_value: int = 0) -> int:
    """A size in bytes: a number or a number with a unit (``40MB``, ``1.5GiB``, ``1e5``); the one size parser."""
    v = node.value
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise node.error(f"expected a size in bytes (e.g. 40000000 or 40MB), got {v!r}")
    if isinstance(v, str):
        m = _SIZE_RE.match(v)
        if not m or (m.group(2) and m.group(2) not in _SIZE_UNIT):
            raise node.error(f"expected a size in bytes (e.g. 40000000, 1e5 or 40MB), got {v!r}")
        value = float(m.group(1)) * _SIZE_UNIT[m.group(2) or "B"]
    else:
        value = float(v)
    if not math.isfinite(value) or value < min_value:
        raise node.error(f"must be >= {min_value} bytes, got {v!r}")
    if value > MAX_BYTES:
        raise node.error(f"{v!r} bytes is absurd (more than 1 PB); check the unit")
    return round(value)


def _int(node: Node, lo: int, hi: int) -> int:
    v = node.value
    if isinstance(v, float) and v.is_integer():
        node = Node(int(v), node.path, node.file, node.line)
    return node.as_int(min_value=lo, max_value=hi)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _reraise(exc: InputError, keys: dict[str, Node], default: Node) -> InputError:
    """Attach the place of the offending field to a domain type's validation message."""
    text = str(exc)
    parts = text.split(": ")
    for part in parts[1:]:
        key = part.split(".", 1)[0]
        if key in keys:
            return keys[key].error(text)
    return default.error(text)


# -- models ---------------------------------------------------------------------------------------
def parse_models(node: Node | None) -> dict[str, ModelSpec]:
    """The ``models`` section: a list of model mappings, keyed by ``name@version``."""
    if node is None:
        return {}
    models: dict[str, ModelSpec] = {}
    for item in node.sequence():
        keys = item.mapping(required=MODEL_KEYS_REQUIRED, optional=MODEL_KEYS_OPTIONAL)
        model_id = keys["id"].as_str().strip()
        if model_id in models:
            raise keys["id"].error(f"model {model_id!r} is defined twice")
        path = None
        if "path" in keys:
            p = Path(keys["path"].as_str())
            path = str(p if p.is_absolute() else keys["path"].base_dir / p)
        try:
            models[model_id] = ModelSpec(
                model_id=model_id,
                size_bytes=parse_size_bytes(keys["size_bytes"], min_value=1),
                sha256=keys["sha256"].as_str().strip() if "sha256" in keys else "",
                memory_bytes=parse_size_bytes(keys["memory_bytes"], min_value=1),
                gflop_per_inference=(_number(keys["gflop_per_inference"], min_value=1e-9, max_value=1e9)
                                     if "gflop_per_inference" in keys else None),
                reference_ms=(_number(keys["reference_ms"], min_value=1e-6, max_value=1e9)
                              if "reference_ms" in keys else None),
                reference_profile=keys["reference_profile"].as_str() if "reference_profile" in keys else None,
                path=path,
            )
        except InputError as exc:
            if str(exc).startswith(item.file):
                raise
            raise _reraise(exc, {**keys, "gflop_per_inference": keys.get("gflop_per_inference", item)},
                           item) from None
    return models


# -- node profiles --------------------------------------------------------------------------------
def _rates(node: Node) -> tuple[tuple[str, float], ...]:
    if node.is_mapping():
        items = node.mapping(optional=node.value.keys())
        if not items:
            raise node.error("give at least one station class (e.g. default: 2e6)")
        return tuple((cls, _number(n, min_value=1.0, max_value=1e13)) for cls, n in items.items())
    return (("default", _number(node, min_value=1.0, max_value=1e13)),)


def _profile(name: str, item: Node, known: dict[str, NodeProfile], models: dict[str, ModelSpec]) -> NodeProfile:
    keys = item.mapping(optional=PROFILE_KEYS)
    values: dict[str, Any] = {}
    if "base" in keys:
        base_name = keys["base"].as_str()
        if base_name not in known:
            raise keys["base"].error(f"unknown profile {base_name!r}{_suggest(base_name, sorted(known))}; "
                                     f"known: {', '.join(sorted(known))}")
        base: NodeProfile | None = known[base_name]
    else:
        base = None
        missing = [f.name for f in fields(NodeProfile)
                   if f.name in PROFILE_KEYS and f.name not in keys
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise item.error(f"missing {', '.join(missing)} (or give base: <profile> to start from)")
    for key in PROFILE_NUMBER_KEYS:
        if key in keys:
            values[key] = _number(keys[key])
    for key in PROFILE_BYTES_KEYS:
        if key in keys:
            values[key] = parse_size_bytes(keys[key], min_value=1)
    if "slots" in keys:
        values["slots"] = _int(keys["slots"], 1, 1024)
    for key in ("uplink_bps", "downlink_bps"):
        if key in keys:
            values[key] = _rates(keys[key])
    if "resident_models" in keys:
        resident: list[str] = []
        for m in keys["resident_models"].sequence_or_one():
            mid = m.as_str().strip()
            if mid not in models:
                raise m.error(f"unknown model {mid!r}{_suggest(mid, sorted(models))}; define it under models")
            resident.append(mid)
        values["resident_models"] = tuple(dict.fromkeys(resident))
    try:
        if base is not None:
            return replace(base, name=name, **values)
        return NodeProfile(name=name, **values)
    except InputError as exc:
        raise _reraise(exc, keys, item) from None


def parse_profiles(node: Node | None, models: dict[str, ModelSpec]) -> dict[str, NodeProfile]:
    """Built-in profiles plus the custom ones of ``nodes.profiles``, by name."""
    known = dict(BUILTIN_PROFILES)
    if node is None:
        return known
    for name, item in node.mapping(optional=node.value.keys() if node.is_mapping() else ()).items():
        if not name.strip():
            raise item.error("profile name must not be empty")
        if name in BUILTIN_PROFILES:
            raise item.error(f"{name!r} is a built-in profile; pick another name (use base: {name} to extend it)")
        known[name] = _profile(name, item, known, models)
    return known


def parse_node_profiles(node: Node | None, constellation: Constellation, models: dict[str, ModelSpec]
                        ) -> tuple[dict[str, NodeProfile], dict[str, NodeProfile]]:
    """The ``nodes`` section: ``(profiles by satellite name, all profiles by profile name)``."""
    if node is None:
        return {}, dict(BUILTIN_PROFILES)
    keys = node.mapping(optional=("profiles", "assign"))
    profiles = parse_profiles(keys.get("profiles"), models)
    by_node: dict[str, NodeProfile] = {}
    names = list(constellation.names)
    known_names = set(names)
    for rule in keys["assign"].sequence() if "assign" in keys else []:
        rk = rule.mapping(required=("profile",), optional=("satellites", "pattern"))
        pname = rk["profile"].as_str()
        if pname not in profiles:
            raise rk["profile"].error(f"unknown node profile {pname!r}{_suggest(pname, sorted(profiles))}; "
                                      f"known: {', '.join(sorted(profiles))}")
        if ("satellites" in rk) == ("pattern" in rk):
            raise rule.error("give exactly one of satellites: [names] or pattern: \"GLOB*\"")
        if "satellites" in rk:
            matched: list[str] = []
            for s in rk["satellites"].sequence_or_one():
                sname = s.as_str()
                if sname not in known_names:
                    raise s.error(f"unknown satellite {sname!r}{_suggest(sname, names)}")
                matched.append(sname)
        else:
            pattern = rk["pattern"].as_str()
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise rk["pattern"].error(f"pattern {pattern!r} matches no satellite of the constellation")
        for sname in matched:
            by_node.setdefault(sname, profiles[pname])
    return by_node, profiles


# -- jobs -----------------------------------------------------------------------------------------
def _instant_s(node: Node, epoch_utc: datetime) -> float | None:
    """An absolute UTC time as seconds after ``epoch_utc``; None when the value is not an absolute time."""
    v = node.value
    if isinstance(v, datetime):
        dt = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        return (dt - epoch_utc).total_seconds()
    if isinstance(v, date):
        raise node.error("expected a UTC time with hours (e.g. 2023-04-20T00:10:00Z), got a date")
    if isinstance(v, str) and re.match(r"^\s*\d{4}-\d{2}-\d{2}", v):
        return (parse_utc(v, where=node.where) - epoch_utc).total_seconds()
    return None


def _offset_s(node: Node) -> float:
    """``+600s``, ``+10m`` or a number of seconds (>= 0)."""
    v = node.value
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise node.error(f"expected a UTC time or an offset such as +600s, got {v!r}")
    text = v.strip().removeprefix("+") if isinstance(v, str) else v
    if isinstance(text, str) and re.fullmatch(r"0+(\.0*)?\s*(ms|s|m|min|h|d)?", text):
        return 0.0
    if isinstance(text, int | float) and text == 0:
        return 0.0
    return parse_duration_s(text, where=node.where)


def _source(node: Node, satellites: set[str], stations: dict[str, GroundStation]) -> JobSource:
    keys = node.mapping(optional=("capture", "uplink", "onboard"))
    if len(keys) != 1:
        raise node.error("give exactly one of capture: {...}, uplink: {...} or onboard: {...}")
    kind, body = next(iter(keys.items()))
    if kind == "capture":
        ck = body.mapping(required=("latitude_deg", "longitude_deg"), optional=("min_elevation_deg",))
        return CaptureSource(
            _number(ck["latitude_deg"], min_value=-90.0, max_value=90.0),
            _number(ck["longitude_deg"], min_value=-180.0, max_value=360.0),
            _number(ck["min_elevation_deg"], min_value=0.0, max_value=89.0) if "min_elevation_deg" in ck else 30.0,
        )
    if kind == "uplink":
        uk = body.mapping(optional=("station",)) if body.value is not None else {}
        if "station" not in uk:
            return UplinkSource(None)
        return UplinkSource(_station_name(uk["station"], stations))
    ok = body.mapping(required=("satellite",))
    name = ok["satellite"].as_str()
    if name not in satellites:
        raise ok["satellite"].error(f"unknown satellite {name!r}{_suggest(name, sorted(satellites))}")
    return OnboardSource(name)


def _station_name(node: Node, stations: dict[str, GroundStation]) -> str:
    name = node.as_str().removeprefix("gs:")
    if name not in stations:
        known = ", ".join(sorted(stations)) or "none defined"
        raise node.error(f"unknown ground station {name!r}{_suggest(name, sorted(stations))}; known: {known}")
    return name


def parse_jobs(node: Node | None, *, epoch_utc: datetime, duration_s: float, models: dict[str, ModelSpec],
               satellites: set[str], stations: dict[str, GroundStation]) -> tuple[Job, ...]:
    """The ``jobs`` section; times become seconds after ``epoch_utc`` (the contact plan start)."""
    if node is None:
        return ()
    jobs: list[Job] = []
    seen: set[str] = set()
    for item in node.sequence():
        keys = item.mapping(required=JOB_KEYS_REQUIRED, optional=JOB_KEYS_OPTIONAL)
        job_id = keys["id"].as_str().strip()
        if not job_id:
            raise keys["id"].error("must not be empty")
        if job_id in seen:
            raise keys["id"].error(f"job {job_id!r} is defined twice")
        seen.add(job_id)
        model_id = keys["model"].as_str().strip()
        if model_id not in models:
            raise keys["model"].error(f"unknown model {model_id!r}{_suggest(model_id, sorted(models))}; "
                                      f"define it under models")
        submit_s = 0.0
        if "submit" in keys:
            sn = keys["submit"]
            t = _instant_s(sn, epoch_utc)
            submit_s = t if t is not None else _offset_s(sn)
            if submit_s < 0:
                raise sn.error(f"submit is {-submit_s:g} s before the scenario start {epoch_utc.isoformat()}")
            if submit_s >= duration_s:
                raise sn.error(f"submit is at or after the end of the scenario window ({duration_s:g} s)")
        dn = keys["deadline"]
        t = _instant_s(dn, epoch_utc)
        if t is None:
            if isinstance(dn.value, bool) or not isinstance(dn.value, int | float | str):
                raise dn.error(f"expected a duration after submit (2h) or a UTC time, got {dn.value!r}")
            deadline_s = submit_s + parse_duration_s(dn.value, where=dn.where)
        else:
            deadline_s = t
            if deadline_s <= submit_s:
                raise dn.error("deadline is before (or at) the submit time")
        try:
            jobs.append(Job(
                job_id=job_id,
                model_id=model_id,
                priority=_int(keys["priority"], 1, 1000) if "priority" in keys else 1,
                submit_s=submit_s,
                deadline_s=deadline_s,
                input_bytes=parse_size_bytes(keys["input_bytes"]),
                output_bytes=parse_size_bytes(keys["output_bytes"]),
                tiles=_int(keys["tiles"], 1, 10**7) if "tiles" in keys else 1,
                source=_source(keys["source"], satellites, stations),
                destination=_station_name(keys["destination"], stations) if "destination" in keys else None,
            ))
        except InputError as exc:
            if str(exc).startswith(item.file):
                raise
            raise _reraise(exc, keys, item) from None
    return tuple(jobs)


# -- the problem -----------------------------------------------------------------------------------
def profiles_by_name(problem: Problem) -> dict[str, NodeProfile]:
    """The problem's node profiles by profile name (what ``NodeProfile.seconds_for`` wants for references)."""
    return {p.name: p for p in problem.profiles_by_node.values()}


def build_problem(scenario: HasRoot, contact_plan: ContactPlan, *, now_s: float = 0.0) -> Problem:
    """Assemble the :class:`Problem` of a scenario over its contact plan.

    Parameters
    ----------
    scenario : a parsed scenario (its ``root`` document holds ``nodes``, ``models``, ``jobs``).
    contact_plan : the contact plan of the scenario's constellation and stations; its
        ``start_utc`` is the problem epoch.
    now_s : seconds after the epoch from which the plan may act.
    """
    root = scenario.root
    sections: dict[str, Node] = root.value if root.is_mapping() else {}
    constellation = contact_plan.constellation
    if len(constellation) == 0:
        place = sections.get("constellation", root)
        raise place.error("the constellation is empty: there is nothing to schedule on")
    models = parse_models(sections.get("models"))
    by_node, profiles = parse_node_profiles(sections.get("nodes"), constellation, models)
    for mid, model in list(models.items()):
        if model.reference_profile is not None and model.gflop_per_inference is None:
            ref_profile = profiles.get(model.reference_profile)
            if ref_profile is None:
                item = next(n for n in sections["models"].sequence() if n.value["id"].value == mid)
                raise item.value["reference_profile"].error(
                    f"unknown node profile {model.reference_profile!r}"
                    f"{_suggest(model.reference_profile, sorted(profiles))}")
            # Resolve the measurement now: custom profiles are not kept in the Problem by name.
            assert model.reference_ms is not None
            models[mid] = replace(model, gflop_per_inference=model.reference_ms / 1000.0 * ref_profile.compute_gflops)
    stations = {s.name: s for s in contact_plan.stations}
    jobs = parse_jobs(sections.get("jobs"), epoch_utc=contact_plan.start_utc, duration_s=contact_plan.duration_s,
                      models=models, satellites=set(constellation.names), stations=stations)
    if not math.isfinite(now_s) or not 0.0 <= now_s <= contact_plan.duration_s:
        raise InputError(f"now_s: must lie within the contact plan window [0, {contact_plan.duration_s:g}] s, "
                         f"got {now_s!r}")
    return Problem(contact_plan.start_utc, contact_plan, by_node, models, jobs, now_s=now_s)
