"""Assemble a :class:`~orbit.contact_plan.ContactPlan` from its three engines."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from orbit.contact_plan import ContactPlan, IslContacts
from orbit.isl import find_isl_contacts
from orbit.passes import find_ground_contacts
from orbit.propagate import DEFAULT_STEP_S, propagate, to_utc
from orbit.sunlight import find_sunlight
from orbit.types import Constellation, GroundStation, IslConfig
from skyinfer.errors import InputError

ProgressFn = Callable[[float, float, str], None]


def build_contact_plan(
    constellation: Constellation,
    stations: tuple[GroundStation, ...] | list[GroundStation],
    start_utc: datetime,
    duration_s: float,
    *,
    isl: IslConfig | None = None,
    sunlight: bool = True,
    step_s: float = DEFAULT_STEP_S,
    progress: ProgressFn | None = None,
) -> ContactPlan:
    """Ground contacts, inter-satellite links and sunlight for one window.

    ``progress(done, total, stage)`` is called as work advances (ground
    contacts dominate; ISL and sunlight follow).
    """
    if len(constellation) == 0:
        raise InputError("constellation: no satellites (an empty constellation has no contact plan)")
    if not duration_s > 0:
        raise InputError(f"duration: must be positive, got {duration_s!r}")
    isl = isl or IslConfig()
    start_utc = to_utc(start_utc)
    stations = tuple(stations)
    n = len(constellation)
    extra = (n if isl.policy != "none" else 0) + (n if sunlight else 0)
    total = float(n + extra)

    def ground_progress(done: int, total_sats: int) -> None:
        if progress is not None:
            progress(float(done), total, "ground contacts")

    ground = find_ground_contacts(constellation, stations, start_utc, duration_s, step_s=step_s,
                                  progress=ground_progress)
    done = float(n)
    isl_contacts = IslContacts.empty()
    sun = None
    if isl.policy != "none" or sunlight:
        eph = propagate(constellation, start_utc, duration_s, step_s=step_s)
        if isl.policy != "none":
            isl_contacts = find_isl_contacts(eph, constellation, isl, duration_s=duration_s)
            done += n
            if progress is not None:
                progress(done, total, "inter-satellite links")
        if sunlight:
            sun = find_sunlight(eph, duration_s=duration_s)
            done += n
            if progress is not None:
                progress(done, total, "sunlight")
    return ContactPlan(
        start_utc=start_utc,
        duration_s=float(duration_s),
        constellation=constellation,
        stations=stations,
        ground=ground,
        isl=isl_contacts,
        sunlight=sun,
        isl_policy=isl.label,
    )
