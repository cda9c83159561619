"""The scheduler's client operations as plain functions over the store: no gRPC here.

:class:`JobService` validates requests against the :class:`Catalog` (what the loaded scenario knows:
models, stations, satellites), writes through the :class:`~scheduler.store.Store`, and raises domain
exceptions that the gRPC layer maps to status codes. :class:`EventHub` fans committed transitions out
to ``WatchJobs`` streams from memory, falling back to the store for cursors older than its window.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from scheduler.store import (
    ACTIVE_STATES,
    JobRecord,
    JobSpec,
    JobState,
    NewTransition,
    Store,
    StoredPlan,
    TransitionError,
    TransitionRecord,
)
from scheduler.types import OnboardSource, Problem, UplinkSource
from skyinfer.errors import InputError, SkyinferError
from skyinfer.scenario import Scenario

R = TypeVar("R")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_DEADLINE_AHEAD_S = 30 * 86400.0  # a deadline a month ahead is a unit mistake, not a plan


class NotReadyError(SkyinferError):
    """The service is starting (the contact plan is not loaded yet)."""


@dataclass(frozen=True, slots=True)
class Catalog:
    """What requests are validated against: the scenario's models, stations and satellites."""

    models: frozenset[str]
    stations: frozenset[str]
    satellites: frozenset[str]
    compute_nodes: dict[str, str]  # satellite name -> node profile name
    epoch_utc: datetime
    horizon_end_utc: datetime

    @classmethod
    def from_problem(cls, problem: Problem) -> Catalog:
        cp = problem.contact_plan
        return cls(
            models=frozenset(problem.models), stations=frozenset(s.name for s in cp.stations),
            satellites=frozenset(cp.satellite_names),
            compute_nodes={node: prof.name for node, prof in problem.profiles_by_node.items()},
            epoch_utc=cp.start_utc, horizon_end_utc=cp.end_utc,
        )


def _known(names: Collection[str], limit: int = 8) -> str:
    shown = sorted(names)[:limit]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(shown) + more if shown else "none"


class JobService:
    """Client operations. Thread-safe; ``catalog`` is None until the contact plan is loaded."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.catalog: Catalog | None = None
        self._plan_lock = threading.Lock()
        self._plan: StoredPlan | None = store.load_plan()

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, spec: JobSpec, now: datetime) -> None:
        """Check a job against the scenario; raise InputError naming the field."""
        cat = self.catalog
        if cat is None:
            raise NotReadyError("starting: the contact plan is not loaded yet; retry shortly")
        if spec.model_id not in cat.models:
            raise InputError(f"model_id: unknown model {spec.model_id!r} (known: {_known(cat.models)})")
        if spec.deadline_utc <= now:
            raise InputError("deadline: before submit time")
        if spec.deadline_utc - now > timedelta(seconds=MAX_DEADLINE_AHEAD_S):
            raise InputError(f"deadline: more than {MAX_DEADLINE_AHEAD_S / 86400:g} days after submit time")
        src = spec.source
        if isinstance(src, UplinkSource) and src.station is not None and src.station not in cat.stations:
            raise InputError(f"uplink.station: unknown station {src.station!r} (known: {_known(cat.stations)})")
        if isinstance(src, OnboardSource) and src.satellite not in cat.satellites:
            raise InputError(f"onboard.satellite: unknown satellite {src.satellite!r}")
        if spec.destination is not None and spec.destination not in cat.stations:
            raise InputError(f"destination: unknown station {spec.destination!r} (known: {_known(cat.stations)})")

    # -- operations -----------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, now: datetime, request_id: str = "",
               fingerprint: str = "") -> concurrent.futures.Future[tuple[JobRecord, bool]]:
        """Validate and durably insert a job; the future resolves after the commit (group-committed)."""
        self.validate(spec, now)
        return self.store.submit_async(spec, now=now, request_id=request_id, fingerprint=fingerprint)

    def submit_deferred(self, make_spec: Callable[[], tuple[JobSpec, str]], *, now: datetime, request_id: str = "",
                        finish: Callable[[JobRecord, bool], R]) -> concurrent.futures.Future[R]:
        """:meth:`submit` for a request that the store's writer converts: ``make_spec()`` returns
        ``(spec, fingerprint)`` or raises (an InputError naming the field), and the spec is validated there too;
        the future resolves to ``finish(job, created)`` after the commit (see Store.submit_deferred_async)."""
        if self.catalog is None:
            raise NotReadyError("starting: the contact plan is not loaded yet; retry shortly")

        def prepare() -> tuple[JobSpec, str]:
            spec, fingerprint = make_spec()
            self.validate(spec, now)
            return spec, fingerprint

        return self.store.submit_deferred_async(prepare, now=now, request_id=request_id, finish=finish)

    def get(self, job_id: str) -> tuple[JobRecord, list[TransitionRecord]]:
        if not job_id:
            raise InputError("job_id: must not be empty")
        job = self.store.get(job_id)
        return job, self.store.transitions(job_id)

    def list(self, *, states: Iterable[JobState] = (), model_id: str = "", page_size: int = 0,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        """One page of jobs in submission order and the token of the next page ("" on the last)."""
        if page_size < 0:
            raise InputError(f"page_size: must be >= 0, got {page_size}")
        if page_size > MAX_PAGE_SIZE:
            raise InputError(f"page_size: at most {MAX_PAGE_SIZE}, got {page_size}")
        size = page_size or DEFAULT_PAGE_SIZE
        state_list = sorted(set(states))
        after_row = _decode_page_token(page_token, state_list, model_id)
        jobs = self.store.list_jobs(states=state_list, model_id=model_id, after_row=after_row, limit=size + 1)
        if len(jobs) > size:
            jobs = jobs[:size]
            return jobs, _encode_page_token(jobs[-1].row, state_list, model_id)
        return jobs, ""

    def cancel(self, job_id: str, *, now: datetime, reason: str = "") -> JobRecord:
        if not job_id:
            raise InputError("job_id: must not be empty")
        if len(reason) > 1000:
            raise InputError("reason: at most 1000 characters")
        job = self.store.get(job_id)
        if job.state.terminal:
            raise TransitionError(f"job_id: job {job_id} is already {job.state.value}; it cannot be cancelled")
        change = NewTransition(job_id, JobState.CANCELLED, reason or "cancelled by client", node=job.node,
                               expect=frozenset(ACTIVE_STATES))
        (rec,) = self.store.transition([change], now=now)
        if rec is None:  # finished between our read and the write
            job = self.store.get(job_id)
            raise TransitionError(f"job_id: job {job_id} is already {job.state.value}; it cannot be cancelled")
        return self.store.get(job_id)

    # -- plan -----------------------------------------------------------------------------------------------
    def set_plan(self, stored: StoredPlan) -> None:
        with self._plan_lock:
            self._plan = stored

    def plan(self) -> StoredPlan | None:
        with self._plan_lock:
            return self._plan


def _encode_page_token(row: int, states: list[JobState], model_id: str) -> str:
    raw = json.dumps({"r": row, "s": [s.value for s in states], "m": model_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_page_token(token: str, states: list[JobState], model_id: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        d = json.loads(raw)
        row = int(d["r"])
        same_query = d["s"] == [s.value for s in states] and d["m"] == model_id
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InputError("page_token: not a token returned by ListJobs") from None
    if not same_query:
        raise InputError("page_token: was issued for a different filter (states/model_id)")
    return row


# ---------------------------------------------------------------------------------------------------------------
# Event fan-out


class _Watcher:
    """A waiting WatchJobs stream: its filter, its cursor and the event that wakes it."""

    __slots__ = ("cursor", "ids", "states", "wake")

    def __init__(self, cursor: int, ids: frozenset[str], states: frozenset[JobState]) -> None:
        self.cursor = cursor
        self.ids = ids
        self.states = states
        self.wake = asyncio.Event()


class EventHub:
    """Committed transitions, kept in memory (the newest ``capacity``) for ``WatchJobs`` streams.

    The store calls :meth:`publish` from its writer thread after each commit and before acknowledging the
    batch, so an event is visible here no later than the reply that reports it. Streams run on the asyncio
    loop ``loop``; a stream whose cursor is older than the memory window reads the store.

    Scale: a committed batch wakes only the streams whose filter (job ids, states) it may match; the
    cursors of the other waiting streams jump past the batch, so a thousand quiet streams cost one cheap
    loop per commit and never re-scan events they do not want.
    """

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, capacity: int = 100_000,
                 post: Callable[[Callable[[list[TransitionRecord]], None], list[TransitionRecord]], None]
                 | None = None) -> None:
        self._store = store
        self._loop = loop
        # How a committed batch reaches the event loop from the writer thread: by default its own
        # call_soon_threadsafe; the server passes one that shares a single loop wake-up per commit with the
        # submits' acknowledgements (see scheduler.servicer.Completions).
        self._post = post or loop.call_soon_threadsafe
        self._lock = threading.Lock()
        self._events: collections.deque[TransitionRecord] = collections.deque()
        self._capacity = capacity
        self._base_seq = store.last_seq()  # events with seq <= base are only in the store
        self._latest_seq = self._base_seq
        self._waiting: set[_Watcher] = set()
        self._woken_upto = self._base_seq  # newest seq whose batch went through _wake
        self._closed = False
        store.add_listener(self.publish)

    @property
    def latest_seq(self) -> int:
        with self._lock:
            return self._latest_seq

    @property
    def watchers(self) -> int:
        return len(self._waiting)

    def publish(self, events: list[TransitionRecord]) -> None:
        with self._lock:
            self._events.extend(events)
            while len(self._events) > self._capacity:
                self._base_seq = self._events.popleft().seq
            self._latest_seq = max(self._latest_seq, events[-1].seq)
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._post(self._wake, events)

    def close(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for w in self._waiting:
            w.wake.set()

    def _wake(self, events: list[TransitionRecord]) -> None:
        last = events[-1].seq
        job_ids = {e.job_id for e in events}
        states = {e.to_state for e in events}
        for w in self._waiting:
            if w.wake.is_set():
                continue
            if (not w.ids or not w.ids.isdisjoint(job_ids)) and (not w.states or not w.states.isdisjoint(states)):
                w.wake.set()
            elif self._woken_upto <= w.cursor < last:
                w.cursor = last  # caught up and nothing in this batch for it: skip it without scanning
        self._woken_upto = max(self._woken_upto, last)

    def _since(self, cursor: int, limit: int) -> list[TransitionRecord] | None:
        with self._lock:
            if cursor < self._base_seq:
                return None
            if cursor >= self._latest_seq:
                return []
            # Events are in seq order: skip from the left end by bisecting on seq.
            lo, hi = 0, len(self._events)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._events[mid].seq <= cursor:
                    lo = mid + 1
                else:
                    hi = mid
            return [self._events[i] for i in range(lo, min(len(self._events), lo + limit))]

    async def watch(self, *, after_seq: int, job_ids: Collection[str] = (),
                    states: Collection[JobState] = ()) -> AsyncIterator[TransitionRecord]:
        """Yield matching events with ``seq > after_seq`` in order, forever (until cancelled)."""
        w = _Watcher(after_seq, frozenset(job_ids), frozenset(states))
        try:
            while not self._closed:
                w.wake.clear()
                batch = self._since(w.cursor, 1000)
                if batch is None:
                    batch = await asyncio.to_thread(self._store.events_after, w.cursor, limit=1000)
                if not batch:
                    self._waiting.add(w)
                    try:
                        await w.wake.wait()
                    finally:
                        self._waiting.discard(w)
                    continue
                for ev in batch:
                    w.cursor = ev.seq
                    if (not w.ids or ev.job_id in w.ids) and (not w.states or ev.to_state in w.states):
                        yield ev
        finally:
            self._waiting.discard(w)


# ---------------------------------------------------------------------------------------------------------------
# The base problem of a served scenario


@dataclass(frozen=True, slots=True)
class ScenarioProblem:
    """Builds the base problem of a scenario file (contact plan, node profiles, models; no jobs) when called.

    A plain, picklable value, so that a planner worker process can build the very same problem (the
    computation is deterministic: contact indices in plans agree between processes).
    """

    path: str
    start_utc: datetime
    duration_s: float

    def moved_to(self, start_utc: datetime) -> ScenarioProblem:
        """The same scenario over a window of the same length from ``start_utc`` (a serve's rolling horizon)."""
        return dataclasses.replace(self, start_utc=start_utc)

    def __call__(self) -> Problem:
        from orbit.build import build_contact_plan
        from scheduler.problem import build_problem
        from skyinfer.scenario import load_scenario

        scenario = load_scenario(self.path)
        plan = build_contact_plan(scenario.constellation, scenario.stations, self.start_utc, self.duration_s,
                                  isl=scenario.isl, sunlight=scenario.sunlight)
        return dataclasses.replace(build_problem(scenario, plan), jobs=())


def problem_loader(scenario: Scenario, *, start_utc: datetime | None = None,
                   duration_s: float | None = None) -> ScenarioProblem:
    """The loader of the scenario's base problem over ``[start_utc, start_utc + duration_s]`` (defaults: the
    scenario's own window). The scenario's ``jobs`` section is ignored: the service's jobs come from clients.
    """
    start = start_utc or scenario.start_utc
    span_s = duration_s or scenario.duration_s
    if start is None:
        raise InputError(f"{scenario.path}: start: the scenario gives no start time; pass one (--start)")
    if span_s is None:
        raise InputError(f"{scenario.path}: duration: the scenario gives no duration; pass one (--horizon)")
    return ScenarioProblem(str(scenario.path), start, float(span_s))
