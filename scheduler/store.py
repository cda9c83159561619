"""The scheduler's durable state: jobs, their transitions, results, nodes and the latest plan, in SQLite.

Durability contract: a job is acknowledged to a client only after the transaction that inserted it
has committed with ``synchronous=FULL`` in WAL mode, i.e. after the WAL has been fsynced. A SIGKILL
(or power loss) at any later moment cannot lose it.

Throughput comes from *group commit*: every write is a small function queued to one writer thread,
which runs everything queued so far in one transaction and fsyncs once for the whole batch. Under
load, hundreds of concurrent submits share one fsync; an idle server commits a lone submit at once.
Reads use one connection per thread (WAL readers never block the writer).

Schema changes are a list of migrations; ``PRAGMA user_version`` records how many have run.

Times are integer milliseconds since the Unix epoch (UTC) in the database, aware UTC ``datetime``
in the Python API. The event sequence number of a transition (its row id) is the ``WatchJobs``
cursor: it increases strictly in commit order.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import json
import logging
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

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


def new_job_id(now: datetime) -> str:
    """A time-ordered unique id: ``job-`` + 48-bit ms timestamp + 64 random bits, base32 (26 chars)."""
    raw = to_ms(now).to_bytes(6, "big") + secrets.token_bytes(8)
    return "job-" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


# ---------------------------------------------------------------------------------------------------------------
# Domain types


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
        return json.dumps({
            "model_id": self.model_id, "priority": self.priority, "deadline_ms": to_ms(self.deadline_utc),
            "source": _source_to_dict(self.source), "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes, "tiles": self.tiles, "destination": self.destination,
            "input_location": self.input_location,
        }, sort_keys=True, separators=(",", ":"))

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


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    transitions: list[TransitionRecord] = field(default_factory=list)


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
        try:
            self._writer_conn = _connect(self.path)
            self.schema_version = migrate(self._writer_conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the job store: {exc}") from exc
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._listeners: list[Callable[[list[TransitionRecord]], None]] = []
        self._closed = False
        self.commits = 0  # number of write transactions (for the benchmark: submits per fsync)
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
    def _write(self, fn: Callable[[sqlite3.Connection, list[TransitionRecord]], T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise StoreError("the job store is closed")
        op = _Op(fn=lambda conn: None)
        op.fn = lambda conn: fn(conn, op.transitions)
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

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # A request whose caller gave up (e.g. its gRPC deadline passed and the wait was cancelled) is
        # dropped before it runs: it was never acknowledged, so it is not written either. Once marked
        # running, a future can no longer be cancelled, so the results below can always be set.
        batch = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                # A savepoint per operation: one failing op (e.g. a duplicate) does not undo the others. One
                # constant name (each savepoint is released before the next opens): distinct names per index
                # were distinct SQL texts that overflowed sqlite3's statement cache, so each was re-prepared.
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn)
                    conn.execute("RELEASE op")
                    results.append((op, value, None))
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.transitions.clear()
                    results.append((op, None, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            log.exception("store: commit of %d operations failed", len(batch))
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for op in batch:
                op.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        events: list[TransitionRecord] = []
        for op, _value, err in results:
            if err is None:
                events.extend(op.transitions)
        # Notify listeners before resolving futures: a client that saw its submit acknowledged and then
        # opens a watch from the returned cursor must find the event already published.
        if events:
            events.sort(key=lambda e: e.seq)
            for fn in self._listeners:
                try:
                    fn(events)
                except Exception:
                    log.exception("store listener failed")
        for op, value, err in results:
            if err is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(err)

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
        spec_json = spec.to_json()
        fingerprint = fingerprint or spec_json
        now_ms = to_ms(now)
        job_id = new_job_id(now)

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> tuple[JobRecord, bool]:
            if request_id:
                row = conn.execute(f"SELECT {_JOB_COLUMNS}, request_fingerprint FROM jobs WHERE request_id = ?",
                                   (request_id,)).fetchone()
                if row is not None:
                    if row[-1] != fingerprint:
                        raise ConflictError(f"request_id: {request_id!r} was already used for a different job "
                                            f"({row[1]})")
                    return _job_from_row(row), False
            cur = conn.execute(
                "INSERT INTO jobs (job_id, request_id, request_fingerprint, spec, model_id, state, reason, submit_ms, "
                "update_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, request_id or None, fingerprint, spec_json, spec.model_id, JobState.PENDING.value, reason,
                 now_ms, now_ms))
            row_id = int(cur.lastrowid or 0)
            cur = conn.execute("INSERT INTO transitions (job_id, from_state, to_state, time_ms, reason) "
                               "VALUES (?, NULL, ?, ?, ?)", (job_id, JobState.PENDING.value, now_ms, reason))
            out.append(TransitionRecord(int(cur.lastrowid or 0), job_id, None, JobState.PENDING, from_ms(now_ms),
                                        reason))
            job = JobRecord(job_id=job_id, request_id=request_id, spec=spec, state=JobState.PENDING, reason=reason,
                            submit_utc=from_ms(now_ms), update_utc=from_ms(now_ms), row=row_id)
            return job, True

        return self._write(op)

    def submit(self, spec: JobSpec, *, now: datetime, request_id: str = "",
               fingerprint: str = "") -> tuple[JobRecord, bool]:
        return self.submit_async(spec, now=now, request_id=request_id, fingerprint=fingerprint).result()

    def transition_async(self, changes: Sequence[NewTransition], *,
                         now: datetime) -> concurrent.futures.Future[list[TransitionRecord | None]]:
        """Apply state changes in one transaction. Each entry yields its record, or None when skipped because
        ``expect`` did not match. An illegal change without ``expect`` raises :class:`TransitionError` (and
        nothing of the batch is applied); an unknown job raises :class:`NotFoundError`."""
        now_ms = to_ms(now)
        changes = list(changes)

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> list[TransitionRecord | None]:
            done: list[TransitionRecord | None] = []
            for ch in changes:
                row = conn.execute("SELECT state, node FROM jobs WHERE job_id = ?", (ch.job_id,)).fetchone()
                if row is None:
                    raise NotFoundError(f"job_id: no job {ch.job_id!r}")
                current = JobState(row[0])
                if ch.expect is not None and current not in ch.expect:
                    done.append(None)
                    continue
                if ch.to_state not in ALLOWED_TRANSITIONS.get(current, frozenset()):
                    raise TransitionError(f"job {ch.job_id} is {current.value}; it cannot become "
                                          f"{ch.to_state.value}")
                node = ch.node
                sets = ["state = ?", "reason = ?", "update_ms = ?", "node = ?"]
                args: list[Any] = [ch.to_state.value, ch.reason, now_ms, node]
                if ch.placement is not None:
                    sets += ["plan_start_ms = ?", "plan_end_ms = ?", "plan_arrival_ms = ?"]
                    args += [to_ms(ch.placement.start_utc), to_ms(ch.placement.end_utc),
                             to_ms(ch.placement.arrival_utc)]
                elif ch.to_state is JobState.PENDING:
                    sets += ["plan_start_ms = NULL", "plan_end_ms = NULL", "plan_arrival_ms = NULL"]
                if ch.work_id is not None:
                    sets.append("work_id = ?")
                    args.append(ch.work_id)
                if ch.result is not None:
                    r = ch.result
                    sets += ["result_location = ?", "result_output = ?", "result_bytes = ?", "result_sha256 = ?",
                             "result_detail = ?"]
                    args += [r.location, r.output, r.output_bytes, r.sha256, r.detail]
                conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*args, ch.job_id))
                cur = conn.execute("INSERT INTO transitions (job_id, from_state, to_state, time_ms, reason, node) "
                                   "VALUES (?, ?, ?, ?, ?, ?)",
                                   (ch.job_id, current.value, ch.to_state.value, now_ms, ch.reason, node))
                rec = TransitionRecord(int(cur.lastrowid or 0), ch.job_id, current, ch.to_state, from_ms(now_ms),
                                       ch.reason, node)
                out.append(rec)
                done.append(rec)
            return done

        return self._write(op)

    def transition(self, changes: Sequence[NewTransition], *, now: datetime) -> list[TransitionRecord | None]:
        return self.transition_async(changes, now=now).result()

    def update_placements(self, placements: dict[str, Placement]) -> None:
        """Record planned times of jobs that stay on their node (no transition: nothing changed state)."""
        rows = [(to_ms(p.start_utc), to_ms(p.end_utc), to_ms(p.arrival_utc), job_id)
                for job_id, p in placements.items()]

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            conn.executemany("UPDATE jobs SET plan_start_ms = ?, plan_end_ms = ?, plan_arrival_ms = ? "
                             "WHERE job_id = ?", rows)

        self._write(op).result()

    def set_reasons(self, reasons: dict[str, str]) -> None:
        """Update the explanation of jobs that stay PENDING (e.g. why the planner cannot place them yet)."""
        rows = [(reason, job_id) for job_id, reason in reasons.items()]

        def op(conn: sqlite3.Connection, out: list[TransitionRecord]) -> None:
            conn.executemany("UPDATE jobs SET reason = ? WHERE job_id = ?", rows)

        self._write(op).result()

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
        return self.list_jobs(states=ACTIVE_STATES, limit=10**9)

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
    return JobRecord(job_id=r[1], request_id=r[2] or "", spec=_spec_from_json(r[3]), state=JobState(r[4]),
                     reason=r[5], submit_utc=from_ms(r[6]), update_utc=from_ms(r[7]), node=r[8], placement=placement,
                     result=result, row=int(r[0]), work_id=r[17])


def _transition_from_row(r: Sequence[Any]) -> TransitionRecord:
    return TransitionRecord(int(r[0]), r[1], JobState(r[2]) if r[2] else None, JobState(r[3]), from_ms(r[4]), r[5],
                            r[6])


# ---------------------------------------------------------------------------------------------------------------
# Plan <-> JSON-able dict (times stay relative to the stored epoch)


def _hops_to_list(hops: Iterable[Hop]) -> list[list[Any]]:
    return [[h.src, h.dst, h.start_s, h.end_s, h.bytes, h.contact] for h in hops]


def _hops_from_list(rows: Iterable[Sequence[Any]]) -> tuple[Hop, ...]:
    return tuple(Hop(str(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4]), int(r[5])) for r in rows)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "policy": plan.policy, "objective": plan.objective, "bound": plan.bound, "wall_s": plan.wall_s,
        "status": plan.status, "notes": list(plan.notes),
        "scheduled": [{"job_id": s.job_id, "node": s.node, "start_s": s.start_s, "end_s": s.end_s,
                       "arrival_s": s.arrival_s, "input_route": _hops_to_list(s.input_route),
                       "output_route": _hops_to_list(s.output_route), "model_route": _hops_to_list(s.model_route),
                       "energy_wh": s.energy_wh} for s in plan.scheduled],
        "unschedulable": [{"job_id": u.job_id, "reason": u.reason} for u in plan.unschedulable],
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
        unschedulable=tuple(Unschedulable(u["job_id"], u["reason"]) for u in d["unschedulable"]),
    )
