"""The scheduler's durable state: jobs, their transitions, results, nodes and the latest plan, in SQLite.

Durability contract: a job is acknowledged to a client only after the transaction that inserted it
has committed with ``synchronous=FULL`` in WAL mode, i.e. after the WAL has been fsynced. A SIGKILL
(or power loss) at any later moment cannot lose it.

Throughput comes from *group commit*: every write is queued to one writer thread, which runs everything
queued so far in one transaction and fsyncs once for the whole batch. Under load, dozens of concurrent
submits share one fsync; an idle server commits a lone submit at once. Submits are queued as plain data and
a run of them is inserted with one statement per table (rows as a JSON array); other writes are small
functions, each in a savepoint. Every SQLite call releases the GIL and must take it back from the busy
event-loop thread, so a batch makes as few calls as it can. Reads use one connection per thread (WAL
readers never block the writer), except :meth:`Store.active_jobs`, which the writer keeps in memory.

Schema changes are a list of migrations; ``PRAGMA user_version`` records how many have run.

Times are integer milliseconds since the Unix epoch (UTC) in the database, aware UTC ``datetime``
in the Python API. The event sequence number of a transition (its row id) is the ``WatchJobs``
cursor: it increases strictly in commit order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

from scheduler.types import (
    MODEL_ID_RE,
    CaptureSource,
    Hop,
    JobSource,
    OnboardSource,
    Plan,
    ScheduledJob,
    Unschedulable,
    UplinkSource,
)
from skyinfer.errors import InputError, SkyinferError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_REQUEST_ID_CHARS = 128
MAX_INLINE_RESULT_BYTES = 1024 * 1024  # larger results are stored by location only
MAX_BYTES = 10**15


class JobState(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})
ACTIVE_STATES = frozenset(JobState) - TERMINAL_STATES

# Allowed transitions. Work on a lost node goes back to PENDING and is re-planned; a re-plan may move a
# SCHEDULED job to another node (SCHEDULED -> SCHEDULED, recorded only when the node changes).
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SCHEDULED, JobState.CANCELLED, JobState.EXPIRED, JobState.FAILED}),
    JobState.SCHEDULED: frozenset({JobState.SCHEDULED, JobState.PENDING, JobState.DISPATCHED, JobState.CANCELLED,
                                   JobState.EXPIRED, JobState.FAILED}),
    JobState.DISPATCHED: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
                                    JobState.EXPIRED, JobState.PENDING}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED,
                                 JobState.PENDING}),
}


class StoreError(SkyinferError):
    """The store cannot do what was asked (closed, corrupt, newer schema)."""


class NotFoundError(SkyinferError, LookupError):
    """No job with that id."""


class TransitionError(SkyinferError):
    """The job's current state does not allow the requested transition (e.g. cancelling a finished job)."""


class ConflictError(SkyinferError):
    """A request id was reused for a different job."""


def to_ms(dt: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: times in the store are aware UTC")
    return round(dt.timestamp() * 1000.0)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = tuple(_B32[i >> 5] + _B32[i & 31] for i in range(1024))  # 10 bits -> 2 characters


def new_job_id(now: datetime) -> str:
    """A time-ordered unique id: ``job-`` + 48-bit ms timestamp + 64 random bits in lower-case base32 without
    padding (23 characters, as ``base64.b32encode`` spells those 14 bytes).

    Encoded from one integer with a table of character pairs: ``base64.b32encode`` is pure Python in 3.11
    and cost more than the rest of a submit's id and timestamp work together.
    """
    bits = (to_ms(now) << 67) | (int.from_bytes(os.urandom(8), "big") << 3)  # 112 bits + 3 zero pad bits
    return "job-" + "".join([_B32_PAIRS[(bits >> shift) & 1023] for shift in range(105, 4, -10)]) + _B32[bits & 31]


# ---------------------------------------------------------------------------------------------------------------
# Domain types

# json.dumps(sort_keys=True, separators=...) builds a new encoder at every call; one shared encoder gives the
# very same text (the C encoder) without that cost on every submit.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks for. ``deadline_utc`` is absolute; sizes in bytes; ``priority`` 1..1000."""

    model_id: str
    priority: int
    deadline_utc: datetime
    source: JobSource
    input_bytes: int
    output_bytes: int
    tiles: int
    destination: str | None = None
    input_location: str = ""

    def __post_init__(self) -> None:
        if not MODEL_ID_RE.match(self.model_id):
            raise InputError(f"model_id: expected name@version, got {self.model_id!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not 1 <= self.priority <= 1000:
            raise InputError(f"priority: must be an integer in [1, 1000], got {self.priority!r}")
        if self.deadline_utc.tzinfo is None:
            raise InputError("deadline: must be an aware UTC time")
        for name in ("input_bytes", "output_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BYTES:
                raise InputError(f"{name}: must be an integer in [0, {MAX_BYTES}], got {v!r}")
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or not 1 <= self.tiles <= 10**7:
            raise InputError(f"tiles: must be an integer in [1, 10000000], got {self.tiles!r}")
        src = self.source
        if isinstance(src, CaptureSource):
            if not -90.0 <= src.latitude_deg <= 90.0:
                raise InputError(f"capture.latitude_deg: must be in [-90, 90], got {src.latitude_deg!r}")
            if not -180.0 <= src.longitude_deg <= 180.0:
                raise InputError(f"capture.longitude_deg: must be in [-180, 180], got {src.longitude_deg!r}")
            if not 0.0 <= src.min_elevation_deg < 90.0:
                raise InputError(f"capture.min_elevation_deg: must be in [0, 90), got {src.min_elevation_deg!r}")
        elif isinstance(src, OnboardSource):
            if not src.satellite:
                raise InputError("onboard.satellite: must not be empty")
        elif not isinstance(src, UplinkSource):
            raise InputError(f"source: unknown kind {src!r}")
        if len(self.input_location) > 4096:
            raise InputError("input_location: at most 4096 characters")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), also used to tell a retry from a different job."""
        return _CANONICAL_JSON.encode({
            "model_id": self.model_id, "priority": self.priority, "deadline_ms": to_ms(self.deadline_utc),
            "source": _source_to_dict(self.source), "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes, "tiles": self.tiles, "destination": self.destination,
            "input_location": self.input_location,
        })

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(model_id=d["model_id"], priority=d["priority"], deadline_utc=from_ms(d["deadline_ms"]),
                   source=_source_from_dict(d["source"]), input_bytes=d["input_bytes"],
                   output_bytes=d["output_bytes"], tiles=d["tiles"], destination=d["destination"],
                   input_location=d.get("input_location", ""))


def _source_to_dict(src: JobSource) -> dict[str, Any]:
    if isinstance(src, CaptureSource):
        return {"kind": "capture", "latitude_deg": src.latitude_deg, "longitude_deg": src.longitude_deg,
                "min_elevation_deg": src.min_elevation_deg}
    if isinstance(src, UplinkSource):
        return {"kind": "uplink", "station": src.station}
    return {"kind": "onboard", "satellite": src.satellite}


def _source_from_dict(d: dict[str, Any]) -> JobSource:
    kind = d["kind"]
    if kind == "capture":
        return CaptureSource(d["latitude_deg"], d["longitude_deg"], d["min_elevation_deg"])
    if kind == "uplink":
        return UplinkSource(d["station"])
    return OnboardSource(d["satellite"])


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job's result: inline ``output`` (small) and/or a ``location`` where it is kept."""

    location: str = ""
    output: bytes = b""
    output_bytes: int = 0
    sha256: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if len(self.output) > MAX_INLINE_RESULT_BYTES:
            raise InputError(f"result.output: {len(self.output)} bytes inline; the limit is "
                             f"{MAX_INLINE_RESULT_BYTES}, store it elsewhere and give its location")


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One state change; ``seq`` is its row id, the WatchJobs cursor."""

    seq: int
    job_id: str
    from_state: JobState | None
    to_state: JobState
    time_utc: datetime
    reason: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and when the current plan runs a job (UTC)."""

    node: str
    start_utc: datetime
    end_utc: datetime
    arrival_utc: datetime


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    request_id: str
    spec: JobSpec
    state: JobState
    reason: str
    submit_utc: datetime
    update_utc: datetime
    node: str = ""
    placement: Placement | None = None
    result: JobResult | None = None
    row: int = 0  # insertion order, the ListJobs paging key
    work_id: str = ""  # the Work sent to the node for the current dispatch


@dataclass(frozen=True, slots=True)
class NewTransition:
    """A requested state change. ``expect`` (optional) guards against races: the change applies only when
    the job is in one of those states; otherwise it is skipped (``None`` returned)."""

    job_id: str
    to_state: JobState
    reason: str
    node: str = ""
    placement: Placement | None = None
    result: JobResult | None = None
    expect: frozenset[JobState] | None = None
    work_id: str | None = None  # set the job's current work id (None: keep)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    state: str  # "connected" | "lost"
    last_seen_utc: datetime
    resident_models: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StoredPlan:
    """The latest plan, with the epoch its relative times count from."""

    epoch_utc: datetime
    planned_at_utc: datetime
    plan: Plan


class _Op:
    """A queued write: ``fn(conn, transitions)`` runs in the writer's transaction and appends the transitions
    it records to ``transitions`` (published after the commit)."""

    __slots__ = ("effect", "fn", "future", "transitions")

    def __init__(self, fn: Callable[[sqlite3.Connection, list[TransitionRecord]], Any],
                 effect: Callable[[dict[str, JobRecord], Any], None] | None = None) -> None:
        self.fn = fn
        # What the committed operation did to active jobs: applied to the store's in-memory copy of them,
        # with fn's return value, after the commit (see Store.active_jobs).
        self.effect = effect
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.transitions: list[TransitionRecord] = []


class _Submit:
    """A queued job insert, as plain data: the writer inserts a whole run of them with one statement per table
    (see :func:`_insert_run`) instead of running a closure per job.

    A *deferred* submit (``prepare`` set) carries no spec yet: the writer calls ``prepare()`` for it just before
    the insert (see :meth:`Store.submit_deferred_async`), and ``finish(job, created)`` makes the future's value.
    """

    __slots__ = ("fingerprint", "finish", "future", "job_id", "now", "now_ms", "prepare", "reason", "request_id",
                 "spec", "spec_json", "transitions")

    spec: JobSpec

    def __init__(self, spec: JobSpec | None, spec_json: str, job_id: str, request_id: str, fingerprint: str,
                 now: datetime, reason: str, *, prepare: Callable[[], tuple[JobSpec, str]] | None = None,
                 finish: Callable[[JobRecord, bool], Any] | None = None) -> None:
        if spec is not None:
            self.spec = spec
        self.spec_json = spec_json
        self.job_id = job_id
        self.request_id = request_id
        self.fingerprint = fingerprint
        self.now = now
        self.now_ms = to_ms(now)
        self.reason = reason
        self.prepare = prepare
        self.finish = finish
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.transitions: list[TransitionRecord] = []

    def run_prepare(self) -> None:
        """Fill in a deferred submit's spec, id and fingerprint (writer thread); raises what ``prepare`` raises."""
        assert self.prepare is not None
        spec, fingerprint = self.prepare()
        self.spec = spec
        self.spec_json = spec.to_json()
        self.fingerprint = fingerprint or self.spec_json
        self.job_id = new_job_id(self.now)
        self.prepare = None


_Outcome = tuple["_Op | _Submit", Any, "BaseException | None"]


# ---------------------------------------------------------------------------------------------------------------
# Schema

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, transitions, results, nodes, plans
    """
    CREATE TABLE jobs (
        row INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        request_id TEXT UNIQUE,
        request_fingerprint TEXT NOT NULL DEFAULT '',
        spec TEXT NOT NULL,
        model_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        submit_ms INTEGER NOT NULL,
        update_ms INTEGER NOT NULL,
        node TEXT NOT NULL DEFAULT '',
        work_id TEXT NOT NULL DEFAULT '',
        plan_start_ms INTEGER, plan_end_ms INTEGER, plan_arrival_ms INTEGER,
        result_location TEXT, result_output BLOB, result_bytes INTEGER, result_sha256 TEXT, result_detail TEXT
    );
    CREATE INDEX jobs_by_state ON jobs(state, row);
    CREATE INDEX jobs_by_model ON jobs(model_id, row);
    CREATE TABLE transitions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        from_state TEXT,
        to_state TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        node TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX transitions_by_job ON transitions(job_id, seq);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        resident_models TEXT NOT NULL DEFAULT '[]',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE plans (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch_ms INTEGER NOT NULL,
        planned_at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    """,
)

_JOB_COLUMNS = ("row, job_id, request_id, spec, state, reason, submit_ms, update_ms, node, plan_start_ms, "
                "plan_end_ms, plan_arrival_ms, result_location, result_output, result_bytes, result_sha256, "
                "result_detail, work_id")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged submit survives power loss, not just a
    # process crash (NORMAL would survive SIGKILL but not a power cut). Group commit pays for it.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations not yet applied; returns the schema version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(f"database schema version {version} is newer than this skyinfer "
                         f"({len(MIGRATIONS)}); upgrade skyinfer")
    for i in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[i].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


class Store:
    """SQLite-backed job store; thread-safe. Writes are group-committed by one writer thread.

    Listeners registered with :meth:`add_listener` receive the transitions of every committed batch,
    in ``seq`` order, from the writer thread (keep them quick).
    """

    def __init__(self, path: str | Path, *, max_batch: int = 1024) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise InputError(f"--db: directory {parent} does not exist")
            if Path(self.path).is_dir():
                raise InputError(f"--db: {self.path} is a directory; give the path of a database file")
        try:
            self._writer_conn = _connect(self.path)
            self.schema_version = migrate(self._writer_conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the job store: {exc}") from exc
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op | _Submit | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._listeners: list[Callable[[list[TransitionRecord]], None]] = []
        self._closed = False
        self.commits = 0  # number of write transactions (for the benchmark: submits per fsync)
        self._ids = _Ids()
        # The active jobs, kept in memory by the writer (loaded here, before it starts): the planning loop
        # reads all of them several times a round, and reading and converting thousands of rows held the
        # GIL away from the gRPC server. Insertion order is row order (new jobs come in row order).
        self._active_lock = threading.Lock()
        self._active: dict[str, JobRecord] = self._load_active(self._writer_conn)
        self._writer = threading.Thread(target=self._run_writer, name="store-writer", daemon=True)
        self._writer.start()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer_conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, fn: Callable[[list[TransitionRecord]], None]) -> None:
        self._listeners.append(fn)

    # -- writer ---------------------------------------------------------------------------------------------
    def _write(self, fn: Callable[[sqlite3.Connection, list[TransitionRecord]], T],
               effect: Callable[[dict[str, JobRecord], T], None] | None = None) -> concurrent.futures.Future[T]:
        if self._closed:
            raise StoreError("the job store is closed")
        op = _Op(fn, effect)
        self._queue.put(op)
        return op.future

    def _run_writer(self) -> None:
        conn = self._writer_conn
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit_batch(conn, batch)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Op | _Submit]) -> None:
        # A request whose caller gave up (e.g. its gRPC deadline passed and the wait was cancelled) is
        # dropped before it runs: it was never acknowledged, so it is not written either. Once marked
        # running, a future can no longer be cancelled, so the results below can always be set.
        batch = [op for op in batch if op.future.set_running_or_notify_cancel()]
        # Deferred submits are converted and checked here, in one tight loop for the whole batch (see
        # submit_deferred_async); one that is refused fails alone and never reaches the database.
        if any(isinstance(op, _Submit) and op.prepare is not None for op in batch):
            batch = [op for op in batch if not isinstance(op, _Submit) or op.prepare is None or _prepared(op)]
        if not batch:
            return
        try:
            try:
                results = self._run_batch(conn, batch, optimistic=True)
            except _OptimisticFailure:
                # A run of submits failed as a whole (e.g. a job id collision): redo the batch with a
                # savepoint per run and, where a run fails, per submit, so that only the failing one fails.
                conn.execute("ROLLBACK")
                self._ids.forget()
                for op in batch:
                    op.transitions.clear()
                results = self._run_batch(conn, batch, optimistic=False)
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            log.exception("store: commit of %d operations failed", len(batch))
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._ids.forget()
            for op in batch:
                op.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        self._update_active(conn, results)
        events: list[TransitionRecord] = []
        for op, _value, err in results:
            if err is None:
                events.extend(op.transitions)
        # Notify listeners before resolving futures: a client that saw its submit acknowledged and then
        # opens a watch from the returned cursor must find the event already published.
        if events:
            events.sort(key=_seq_of)
            for fn in self._listeners:
                try:
                    fn(events)
                except Exception:
                    log.exception("store listener failed")
        for op, value, err in results:
            if err is not None:
                op.future.set_exception(err)
            elif isinstance(op, _Submit) and op.finish is not None:
                try:
                    op.future.set_result(op.finish(*value))
                except Exception as exc:  # committed, but the caller's reply could not be made
                    log.exception("store: finishing a submit failed")
                    op.future.set_exception(exc)
            else:
                op.future.set_result(value)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op | _Submit], *,
                   optimistic: bool) -> list[_Outcome]:
        """Run a batch in a new transaction (left open for the caller to commit).

        Every SQLite call releases the GIL and must take it back from the busy event-loop thread, which can
        take up to the interpreter's switch interval (5 ms): a batch therefore makes as few calls as it can.
        Consecutive submits are inserted together with one statement per table and, when ``optimistic``,
        without a savepoint of their own (a failure raises :class:`_OptimisticFailure` and the caller redoes
        the batch with ``optimistic=False``). Other operations always get a savepoint each: their failures
        (a refused transition, say) are expected outcomes that must not undo the rest of the batch.
        """
        conn.execute("BEGIN IMMEDIATE")
        results: list[_Outcome] = []
        i = 0
        while i < len(batch):
            op = batch[i]
            if isinstance(op, _Submit):
                # A run of consecutive submits, inserted together in queue order.
                end = i + 1
                while end < len(batch) and isinstance(batch[end], _Submit):
                    end += 1
                run = cast(list[_Submit], batch[i:end])
                if optimistic:
                    try:
                        results.extend(_insert_run(conn, self._ids, run))
                    except Exception as exc:
                        raise _OptimisticFailure from exc
                else:
                    results.extend(self._insert_run_safely(conn, run))
                i = end
            else:
                outcome = _run_in_savepoint(conn, op, op.fn)
                if outcome[2] is not None:
                    self._ids.forget()  # rolled back to its savepoint: rows it numbered are gone
                results.append(outcome)
                i += 1
        return results

    def _insert_run_safely(self, conn: sqlite3.Connection, run: list[_Submit]) -> list[_Outcome]:
        """Insert a run of submits in one savepoint; should that fail, each submit alone in its own savepoint,
        so that one failing request does not undo the others."""
        conn.execute("SAVEPOINT op")
        try:
            results = _insert_run(conn, self._ids, run)
            conn.execute("RELEASE op")
            return results
        except Exception:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._ids.forget()
        results = []
        for sub in run:
            sub.transitions.clear()
            outcome = _run_in_savepoint(conn, sub, functools.partial(_insert_one, self._ids, sub))
            if outcome[2] is not None:
                self._ids.forget()
            # When the insert ran, its own outcome counts (it may be a ConflictError).
            results.append(outcome if outcome[2] is not None else outcome[1])
        return results

    @staticmethod
    def _load_active(conn: sqlite3.Connection) -> dict[str, JobRecord]:
        marks = ",".join("?" * len(ACTIVE_STATES))
        rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY row",
                            sorted(s.value for s in ACTIVE_STATES)).fetchall()
        return {r[1]: _job_from_row(r) for r in rows}

    def _update_active(self, conn: sqlite3.Connection, results: list[_Outcome]) -> None:
        """Apply what a committed batch did to the in-memory active jobs (before anyone hears of the commit,
        so that a caller who got an acknowledgement reads its own writes)."""
        with self._active_lock:
            active = self._active
            try:
                for op, value, err in results:
                    if err is not None:
                        continue
                    if isinstance(op, _Submit):
                        job, created = value
                        if created:
                            active[job.job_id] = job
                    elif op.effect is not None:
                        op.effect(active, value)
            except Exception:
                # A change to a job that is not there: the copy went wrong somewhere. Read it again from
                # the store (committed, and nobody else writes): slower, but right.
                log.exception("store: in-memory active jobs out of step; reloading them")
                self._active = self._load_active(conn)

    # -- readers --------------------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("the job store is closed")
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- jobs -----------------------------------------------------------------------------------------------
    def submit_async(self, spec: JobSpec, *, now: datetime, request_id: str = "", fingerprint: str = "",
                     reason: str = "submitted") -> concurrent.futures.Future[tuple[JobRecord, bool]]:
        """Insert a PENDING job (group-committed). The future gives ``(job, created)``; ``created`` is False
        when ``request_id`` was used before with the same request (that earlier job is returned). A request id
        reused with a different request fails with :class:`ConflictError`.

        ``fingerprint`` identifies the request as the client sent it (a relative deadline resolves to a
        different absolute one on a retry); without one the resolved spec is compared."""
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InputError(f"request_id: at most {MAX_REQUEST_ID_CHARS} characters, got {len(request_id)}")
        if self._closed:
            raise StoreError("the job store is closed")
        spec_json = spec.to_json()
        sub = _Submit(spec, spec_json, new_job_id(now), request_id, fingerprint or spec_json, now, reason)
        self._queue.put(sub)
        return sub.future

    def submit_deferred_async(self, prepare: Callable[[], tuple[JobSpec, str]], *, now: datetime,
                              request_id: str = "", finish: Callable[[JobRecord, bool], R],
                              reason: str = "submitted") -> concurrent.futures.Future[R]:
        """:meth:`submit_async` for a job whose spec the writer thread makes: ``prepare()`` returns
        ``(spec, fingerprint)`` (``fingerprint`` may be empty, see :meth:`submit_async`) or raises, and fails
        only this submit; once committed, the future's value is ``finish(job, created)``.

        The server's submits go this way: converting and checking a request, numbering it and writing its
        reply, done for a whole group commit in one loop on the writer thread, cost less than the same work
        interleaved with the event loop's gRPC handling one request at a time (an 8-round A/B of the server:
        +9 % submits per second).
        """
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InputError(f"request_id: at most {MAX_REQUEST_ID_CHARS} characters, got {len(request_id)}")
        if self._closed:
            raise StoreError("the job store is closed")
        sub = _Submit(None, "", "", request_id, "", now, reason, prepare=prepare, finish=finish)
        self._queue.put(sub)
        return sub.future

    def submit(self, spec: JobSpec, *, now: datetime, request_id: str = "",
               fingerprint: str = "") -> tuple[JobRecord, bool]:
        return self.submit_async(spec, now=now, request_id=request_id, fingerprint=fingerprint).result()

    def transition_async(self, changes: Sequence[NewTransition], *,
                         now: datetime) -> concurrent.futures.Future[list[TransitionRecord | None]]:
        """Apply state changes in one transaction. Each entry yields its record, or None when skipped because
        ``expect`` did not match. An illegal change without ``expect`` raises :class:`TransitionError` (and
        nothing of the batch is applied); an unknown job raises :class:`NotFoundError`.

        Changes apply in order (a job may change twice in one call). They are written with one statement to
        read the jobs' states, one ``UPDATE`` per distinct set of changed columns and one insert of all the
        transition rows: a planning round or a replay instant changes thousands of jobs at once."""
        now_ms = to_ms(now)
        changes = list(changes)

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> list[TransitionRecord | None]:
            return _apply_transitions(conn, self._ids, changes, now_ms, out)

        def effect(active: dict[str, JobRecord], done: list[TransitionRecord | None]) -> None:
            for ch, rec in zip(changes, done, strict=True):
                if rec is not None:
                    _change_active(active, ch, rec)

        return self._write(op, effect)

    def transition(self, changes: Sequence[NewTransition], *, now: datetime) -> list[TransitionRecord | None]:
        return self.transition_async(changes, now=now).result()

    def update_placements(self, placements: dict[str, Placement]) -> None:
        """Record planned times of jobs that stay on their node (no transition: nothing changed state)."""
        rows = [(to_ms(p.start_utc), to_ms(p.end_utc), to_ms(p.arrival_utc), job_id)
                for job_id, p in placements.items()]

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            _bulk(conn, _update_statement(("plan_start_ms", "plan_end_ms", "plan_arrival_ms")), rows)

        def effect(active: dict[str, JobRecord], _value: None) -> None:
            for start_ms, end_ms, arrival_ms, job_id in rows:
                job = active.get(job_id)
                if job is not None:
                    placement = Placement(job.node, from_ms(start_ms), from_ms(end_ms), from_ms(arrival_ms))
                    active[job_id] = dataclasses.replace(job, placement=placement)

        self._write(op, effect).result()

    def set_reasons(self, reasons: dict[str, str]) -> None:
        """Update the explanation of jobs that stay PENDING (e.g. why the planner cannot place them yet)."""
        rows = [(reason, job_id) for job_id, reason in reasons.items()]

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            _bulk(conn, _update_statement(("reason",)), rows)

        def effect(active: dict[str, JobRecord], _value: None) -> None:
            for reason, job_id in rows:
                job = active.get(job_id)
                if job is not None:
                    active[job_id] = dataclasses.replace(job, reason=reason)

        self._write(op, effect).result()

    def get(self, job_id: str) -> JobRecord:
        row = self._reader().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return _job_from_row(row)

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        ids = list(job_ids)
        out: dict[str, JobRecord] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._reader().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id IN ({marks})", chunk):
                job = _job_from_row(row)
                out[job.job_id] = job
        return out

    def transitions(self, job_id: str) -> list[TransitionRecord]:
        rows = self._reader().execute(
            "SELECT seq, job_id, from_state, to_state, time_ms, reason, node FROM transitions WHERE job_id = ? "
            "ORDER BY seq", (job_id,)).fetchall()
        return [_transition_from_row(r) for r in rows]

    def list_jobs(self, *, states: Iterable[JobState] = (), model_id: str = "", after_row: int = 0,
                  limit: int = 100) -> list[JobRecord]:
        """Jobs in submission order with ``row > after_row``, filtered; at most ``limit``."""
        where = ["row > ?"]
        args: list[Any] = [after_row]
        state_list = [s.value for s in states]
        if state_list:
            where.append(f"state IN ({','.join('?' * len(state_list))})")
            args += state_list
        if model_id:
            where.append("model_id = ?")
            args.append(model_id)
        rows = self._reader().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY row LIMIT ?",
            (*args, limit)).fetchall()
        return [_job_from_row(r) for r in rows]

    def active_jobs(self) -> list[JobRecord]:
        """Every job not in a terminal state, in submission order, as of the latest commit (from memory: see
        ``_active``; the same records a query would give)."""
        with self._active_lock:
            return list(self._active.values())

    def events_after(self, seq: int, *, limit: int = 1000) -> list[TransitionRecord]:
        rows = self._reader().execute(
            "SELECT seq, job_id, from_state, to_state, time_ms, reason, node FROM transitions WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [_transition_from_row(r) for r in rows]

    def last_seq(self) -> int:
        row = self._reader().execute("SELECT COALESCE(MAX(seq), 0) FROM transitions").fetchone()
        return int(row[0])

    # -- nodes ----------------------------------------------------------------------------------------------
    def upsert_node(self, node: NodeRecord) -> None:
        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            conn.execute(
                "INSERT INTO nodes (node_id, state, last_seen_ms, resident_models, detail) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET state = excluded.state, last_seen_ms = excluded.last_seen_ms, "
                "resident_models = excluded.resident_models, detail = excluded.detail",
                (node.node_id, node.state, to_ms(node.last_seen_utc), json.dumps(list(node.resident_models)),
                 node.detail))

        self._write(op).result()

    def nodes(self) -> list[NodeRecord]:
        rows = self._reader().execute(
            "SELECT node_id, state, last_seen_ms, resident_models, detail FROM nodes ORDER BY node_id").fetchall()
        return [NodeRecord(r[0], r[1], from_ms(r[2]), tuple(json.loads(r[3])), r[4]) for r in rows]

    # -- metadata -------------------------------------------------------------------------------------------
    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored value of ``key``; stores ``value`` first when there is none."""

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return str(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return self._write(op).result()

    # -- plan -----------------------------------------------------------------------------------------------
    def save_plan(self, stored: StoredPlan) -> None:
        body = json.dumps(plan_to_dict(stored.plan), separators=(",", ":"))

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            conn.execute("INSERT INTO plans (id, epoch_ms, planned_at_ms, body) VALUES (1, ?, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET epoch_ms = excluded.epoch_ms, "
                         "planned_at_ms = excluded.planned_at_ms, body = excluded.body",
                         (to_ms(stored.epoch_utc), to_ms(stored.planned_at_utc), body))

        self._write(op).result()

    def load_plan(self) -> StoredPlan | None:
        row = self._reader().execute("SELECT epoch_ms, planned_at_ms, body FROM plans WHERE id = 1").fetchone()
        if row is None:
            return None
        return StoredPlan(from_ms(row[0]), from_ms(row[1]), plan_from_dict(json.loads(row[2])))


# ---------------------------------------------------------------------------------------------------------------
# Writer internals (run in the writer thread, inside its transaction)


def _prepared(sub: _Submit) -> bool:
    """Run a deferred submit's ``prepare``; False (its future failed) when it raises."""
    try:
        sub.run_prepare()
    except Exception as exc:
        sub.future.set_exception(exc)
        return False
    return True


def _seq_of(rec: TransitionRecord) -> int:
    return rec.seq


def _run_in_savepoint(conn: sqlite3.Connection, op: _Op | _Submit,
                      fn: Callable[[sqlite3.Connection, list[TransitionRecord]], Any]) -> _Outcome:
    """Run one operation in its own savepoint: if it fails, its changes are undone and nothing else.

    One constant savepoint name (each is released before the next opens): distinct names were distinct SQL
    texts that overflowed sqlite3's statement cache, so each was prepared again."""
    conn.execute("SAVEPOINT op")
    try:
        value = fn(conn, op.transitions)
        conn.execute("RELEASE op")
        return op, value, None
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        op.transitions.clear()
        return op, None, exc


class _OptimisticFailure(Exception):
    """A run of submits failed without a savepoint of its own: the batch is redone with savepoints."""


class _Ids:
    """The largest job row and transition seq used so far, kept by the writer (the store's only writer):
    inserted rows get explicit consecutive ids, so that a whole batch goes in with one statement and without
    a query for the ids first. Forgotten after any rollback (the numbered rows may be gone) and read again;
    the reading is what ``AUTOINCREMENT`` continues from, so both ways of numbering agree."""

    __slots__ = ("row", "seq", "valid")

    def __init__(self) -> None:
        self.row = 0
        self.seq = 0
        self.valid = False

    def forget(self) -> None:
        self.valid = False

    def load(self, conn: sqlite3.Connection) -> None:
        if self.valid:
            return
        r = conn.execute(
            "SELECT max(COALESCE((SELECT MAX(row) FROM jobs), 0), "
            "           COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0)), "
            "       max(COALESCE((SELECT MAX(seq) FROM transitions), 0), "
            "           COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'transitions'), 0))").fetchone()
        self.row, self.seq = int(r[0]), int(r[1])
        self.valid = True


def _json_rows(rows: Sequence[Sequence[Any]]) -> str | None:
    """``rows`` as one JSON array for a ``json_each`` bulk statement, or None when a string holds a NUL
    character (SQLite's JSON functions would cut it there): those go through ``executemany``. The encoder
    writes a NUL as ``\\u0000``; a client's literal backslash-u-0000 also matches, which only costs the slower
    path."""
    text = _BULK_JSON.encode(rows)
    return None if "\\u0000" in text else text


def _bulk(conn: sqlite3.Connection, statement: tuple[str, str], rows: Sequence[Sequence[Any]]) -> None:
    """Run ``statement`` for every row: one call with all rows as a JSON array (``statement[0]``), else
    ``executemany`` of the per-row form (``statement[1]``).

    One call, not ``executemany``: that steps once per row, releasing the GIL and taking it back from the
    busy event-loop thread each time, which under load cost the writer up to 5 ms a row.
    """
    if not rows:
        return
    text = _json_rows(rows)
    if text is None:
        conn.executemany(statement[1], rows)
    else:
        conn.execute(statement[0], (text,))


_BULK_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_INSERT_JOB = (
    "INSERT INTO jobs (row, job_id, request_id, request_fingerprint, spec, model_id, state, reason, submit_ms, "
    "update_ms) SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, 'PENDING', value->>6, "
    "value->>7, value->>8 FROM json_each(?)",
    "INSERT INTO jobs (row, job_id, request_id, request_fingerprint, spec, model_id, state, reason, submit_ms, "
    "update_ms) VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?, ?, ?)")
_INSERT_TRANSITION = (
    "INSERT INTO transitions (seq, job_id, from_state, to_state, time_ms, reason, node) "
    "SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6 FROM json_each(?)",
    "INSERT INTO transitions (seq, job_id, from_state, to_state, time_ms, reason, node) VALUES (?, ?, ?, ?, ?, ?, ?)")


def _insert_run(conn: sqlite3.Connection, ids: _Ids, run: Sequence[_Submit]) -> list[_Outcome]:
    """Insert the submits of ``run``: one lookup of their request ids, one insert per table. A request id seen
    before (in the store or earlier in the run) yields that job (``created=False``) or a ConflictError."""
    known: dict[str, tuple[str, Sequence[Any] | JobRecord]] = {}  # request id -> (fingerprint, row or job)
    request_ids = list({sub.request_id: None for sub in run if sub.request_id})
    if request_ids:
        text = _json_rows([request_ids])
        if text is not None:
            found = conn.execute(f"SELECT {_JOB_COLUMNS}, request_fingerprint FROM jobs WHERE request_id IN "
                                 "(SELECT value FROM json_each(?, '$[0]'))", (text,)).fetchall()
        else:
            found = [r for rid in request_ids for r in conn.execute(
                f"SELECT {_JOB_COLUMNS}, request_fingerprint FROM jobs WHERE request_id = ?", (rid,))]
        for r in found:
            known[r[2]] = (r[-1], r)
    ids.load(conn)
    last_row, last_seq = ids.row, ids.seq
    job_rows: list[tuple[Any, ...]] = []
    transition_rows: list[tuple[Any, ...]] = []
    results: list[_Outcome] = []
    for sub in run:
        rid = sub.request_id
        if rid and rid in known:
            fingerprint, earlier = known[rid]
            job = earlier if isinstance(earlier, JobRecord) else _job_from_row(earlier)
            if fingerprint != sub.fingerprint:
                results.append((sub, None, ConflictError(f"request_id: {rid!r} was already used for a different "
                                                         f"job ({job.job_id})")))
            else:
                results.append((sub, (job, False), None))
            continue
        last_row += 1
        last_seq += 1
        at = from_ms(sub.now_ms)
        job = JobRecord(job_id=sub.job_id, request_id=rid, spec=sub.spec, state=JobState.PENDING, reason=sub.reason,
                        submit_utc=at, update_utc=at, row=last_row)
        job_rows.append((last_row, sub.job_id, rid or None, sub.fingerprint, sub.spec_json, sub.spec.model_id,
                         sub.reason, sub.now_ms, sub.now_ms))
        transition_rows.append((last_seq, sub.job_id, None, "PENDING", sub.now_ms, sub.reason, ""))
        sub.transitions.append(TransitionRecord(last_seq, sub.job_id, None, JobState.PENDING, at, sub.reason))
        results.append((sub, (job, True), None))
        if rid:
            known[rid] = (sub.fingerprint, job)
    _bulk(conn, _INSERT_JOB, job_rows)
    _bulk(conn, _INSERT_TRANSITION, transition_rows)
    ids.row, ids.seq = last_row, last_seq
    return results


def _insert_one(ids: _Ids, sub: _Submit, conn: sqlite3.Connection, _out: list[TransitionRecord]) -> _Outcome:
    return _insert_run(conn, ids, [sub])[0]


_STATE_BY_VALUE: dict[str, JobState] = {s.value: s for s in JobState}


def _update_statement(shape: tuple[str, ...]) -> tuple[str, str]:
    """``UPDATE jobs`` of the columns ``shape`` for many jobs: bulk (JSON rows ``[*values, job_id]``) and
    per-row forms."""
    bulk_sets = ", ".join(f"{c} = j.value->>{k}" for k, c in enumerate(shape))
    return (f"UPDATE jobs SET {bulk_sets} FROM json_each(?) AS j WHERE jobs.job_id = j.value->>{len(shape)}",
            f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in shape)} WHERE job_id = ?")


def _apply_transitions(conn: sqlite3.Connection, ids: _Ids, changes: Sequence[NewTransition], now_ms: int,
                       out: list[TransitionRecord]) -> list[TransitionRecord | None]:
    """The body of :meth:`Store.transition_async`: check every change against the job's state (as left by the
    earlier changes of the call), then write. Raises before writing anything when a change is not allowed."""
    state_of: dict[str, JobState] = {}
    ids_text = _json_rows([list({ch.job_id: None for ch in changes})])
    if ids_text is not None:
        rows = conn.execute("SELECT job_id, state FROM jobs WHERE job_id IN (SELECT value FROM json_each(?, '$[0]'))",
                            (ids_text,)).fetchall()
    else:
        rows = [r for ch in changes for r in conn.execute("SELECT job_id, state FROM jobs WHERE job_id = ?",
                                                          (ch.job_id,))]
    for job_id, state in rows:
        state_of[job_id] = _STATE_BY_VALUE[state]
    at = from_ms(now_ms)
    columns_of: dict[str, dict[str, Any]] = {}  # job id -> the columns its changes set, last change winning
    transition_rows: list[tuple[Any, ...]] = []
    done: list[TransitionRecord | None] = []
    ids.load(conn)
    last_seq = ids.seq
    for ch in changes:
        current = state_of.get(ch.job_id)
        if current is None:
            raise NotFoundError(f"job_id: no job {ch.job_id!r}")
        if ch.expect is not None and current not in ch.expect:
            done.append(None)
            continue
        if ch.to_state not in ALLOWED_TRANSITIONS.get(current, frozenset()):
            raise TransitionError(f"job {ch.job_id} is {current.value}; it cannot become {ch.to_state.value}")
        cols = columns_of.setdefault(ch.job_id, {})
        cols["state"] = ch.to_state.value
        cols["reason"] = ch.reason
        cols["update_ms"] = now_ms
        cols["node"] = ch.node
        if ch.placement is not None:
            cols["plan_start_ms"] = to_ms(ch.placement.start_utc)
            cols["plan_end_ms"] = to_ms(ch.placement.end_utc)
            cols["plan_arrival_ms"] = to_ms(ch.placement.arrival_utc)
        elif ch.to_state is JobState.PENDING:
            cols["plan_start_ms"] = cols["plan_end_ms"] = cols["plan_arrival_ms"] = None
        if ch.work_id is not None:
            cols["work_id"] = ch.work_id
        if ch.result is not None:
            r = ch.result
            cols.update(result_location=r.location, result_output=r.output, result_bytes=r.output_bytes,
                        result_sha256=r.sha256, result_detail=r.detail)
        last_seq += 1
        transition_rows.append((last_seq, ch.job_id, current.value, ch.to_state.value, now_ms, ch.reason, ch.node))
        rec = TransitionRecord(last_seq, ch.job_id, current, ch.to_state, at, ch.reason, ch.node)
        out.append(rec)
        done.append(rec)
        state_of[ch.job_id] = ch.to_state
    # One UPDATE per job (its changes merged), grouped by the columns set: one statement per shape.
    by_shape: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for job_id, cols in columns_of.items():
        by_shape.setdefault(tuple(cols), []).append((*cols.values(), job_id))
    for shape, update_rows in by_shape.items():
        if "result_output" in shape:  # bytes have no JSON form: row by row (one result per finished job)
            conn.executemany(_update_statement(shape)[1], update_rows)
        else:
            _bulk(conn, _update_statement(shape), update_rows)
    _bulk(conn, _INSERT_TRANSITION, transition_rows)
    ids.seq = last_seq
    return done


def _change_active(active: dict[str, JobRecord], ch: NewTransition, rec: TransitionRecord) -> None:
    """Apply a committed transition to the in-memory active jobs, as the store's columns now read: the
    placement's node is the job's node, times are whole milliseconds."""
    job = active[ch.job_id]  # a job that changed state was active (KeyError: out of step, see _update_active)
    if rec.to_state in TERMINAL_STATES:
        del active[ch.job_id]
        return
    placement = job.placement
    if ch.placement is not None:
        p = ch.placement
        placement = Placement(ch.node, from_ms(to_ms(p.start_utc)), from_ms(to_ms(p.end_utc)),
                              from_ms(to_ms(p.arrival_utc)))
    elif ch.to_state is JobState.PENDING:
        placement = None
    elif placement is not None:
        placement = dataclasses.replace(placement, node=ch.node)
    result = job.result if ch.result is None else ch.result
    active[ch.job_id] = dataclasses.replace(
        job, state=rec.to_state, reason=ch.reason, update_utc=rec.time_utc, node=ch.node, placement=placement,
        result=result, work_id=job.work_id if ch.work_id is None else ch.work_id)


@functools.lru_cache(maxsize=1 << 16)
def _spec_from_json(text: str) -> JobSpec:
    """The spec stored as ``text``, parsed once. A spec never changes after its insert, and the planning loop
    re-reads every active job each round: without this cache, parsing and validating the JSON of a backlog of
    6,000 jobs took ~250 ms of every round (holding the GIL that the gRPC handlers need). JobSpec is frozen,
    so sharing one instance between records is safe; lru_cache is thread-safe."""
    return JobSpec.from_json(text)


def _job_from_row(r: Sequence[Any]) -> JobRecord:
    placement = None
    if r[9] is not None and r[10] is not None and r[11] is not None:
        placement = Placement(r[8], from_ms(r[9]), from_ms(r[10]), from_ms(r[11]))
    result = None
    if r[12] is not None or r[13] is not None:
        result = JobResult(location=r[12] or "", output=bytes(r[13] or b""), output_bytes=int(r[14] or 0),
                           sha256=r[15] or "", detail=r[16] or "")
    return JobRecord(job_id=r[1], request_id=r[2] or "", spec=_spec_from_json(r[3]), state=_STATE_BY_VALUE[r[4]],
                     reason=r[5], submit_utc=from_ms(r[6]), update_utc=from_ms(r[7]), node=r[8], placement=placement,
                     result=result, row=int(r[0]), work_id=r[17])


def _transition_from_row(r: Sequence[Any]) -> TransitionRecord:
    return TransitionRecord(int(r[0]), r[1], _STATE_BY_VALUE[r[2]] if r[2] else None, _STATE_BY_VALUE[r[3]],
                            from_ms(r[4]), r[5], r[6])


# ---------------------------------------------------------------------------------------------------------------
# Plan <-> JSON-able dict (times stay relative to the stored epoch)


def _hops_to_list(hops: Iterable[Hop]) -> list[list[Any]]:
    return [[h.src, h.dst, h.start_s, h.end_s, h.bytes, h.contact] for h in hops]


def _hops_from_list(rows: Iterable[Sequence[Any]]) -> tuple[Hop, ...]:
    return tuple(Hop(str(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4]), int(r[5])) for r in rows)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    # Unschedulable jobs as [job_id, index into "reasons"]: a backlog of thousands of jobs shares a handful of
    # reasons, and the plan is saved every round (one dict per job made it several times slower to encode).
    index: dict[str, int] = {}
    unschedulable = [[u.job_id, index.setdefault(u.reason, len(index))] for u in plan.unschedulable]
    return {
        "policy": plan.policy, "objective": plan.objective, "bound": plan.bound, "wall_s": plan.wall_s,
        "status": plan.status, "notes": list(plan.notes),
        "scheduled": [{"job_id": s.job_id, "node": s.node, "start_s": s.start_s, "end_s": s.end_s,
                       "arrival_s": s.arrival_s, "input_route": _hops_to_list(s.input_route),
                       "output_route": _hops_to_list(s.output_route), "model_route": _hops_to_list(s.model_route),
                       "energy_wh": s.energy_wh} for s in plan.scheduled],
        "reasons": list(index), "unschedulable": unschedulable,
    }


def plan_from_dict(d: dict[str, Any]) -> Plan:
    return Plan(
        policy=d["policy"], objective=float(d["objective"]), bound=float(d["bound"]), wall_s=float(d["wall_s"]),
        status=d["status"], notes=tuple(d["notes"]),
        scheduled=tuple(ScheduledJob(job_id=s["job_id"], node=s["node"], start_s=s["start_s"], end_s=s["end_s"],
                                     arrival_s=s["arrival_s"], input_route=_hops_from_list(s["input_route"]),
                                     output_route=_hops_from_list(s["output_route"]),
                                     model_route=_hops_from_list(s["model_route"]), energy_wh=s["energy_wh"])
                        for s in d["scheduled"]),
        unschedulable=tuple(_unschedulable_from(u, d.get("reasons", [])) for u in d["unschedulable"]),
    )


def _unschedulable_from(entry: Any, reasons: list[str]) -> Unschedulable:
    if isinstance(entry, dict):  # plans saved before the compact form: {"job_id": ..., "reason": ...}
        return Unschedulable(entry["job_id"], entry["reason"])
    job_id, index = entry
    return Unschedulable(job_id, reasons[index])
