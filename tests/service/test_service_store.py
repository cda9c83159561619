"""The SQLite job store: schema versioning, life-cycle rules, group commit, persistence across reopen."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler.store import (
    MIGRATIONS,
    ConflictError,
    JobResult,
    JobSpec,
    JobState,
    NewTransition,
    NotFoundError,
    Store,
    StoreError,
    TransitionError,
)
from scheduler.types import CaptureSource, UplinkSource
from skyinfer.errors import InputError

NOW = datetime(2023, 4, 20, 0, 1, tzinfo=UTC)


def _spec(**kw: object) -> JobSpec:
    fields: dict[str, object] = dict(model_id="tiny@1", priority=1, deadline_utc=NOW + timedelta(hours=2),
                                     source=UplinkSource(None), input_bytes=10, output_bytes=10, tiles=1)
    fields.update(kw)
    return JobSpec(**fields)  # type: ignore[arg-type]


def test_schema_version_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this skyinfer"):
        Store(db)


def test_jobs_and_transitions_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(db) as store:
        job, created = store.submit(_spec(source=CaptureSource(48.1, 11.6, 30.0)), now=NOW, request_id="r1")
        assert created
        store.transition([NewTransition(job.job_id, JobState.SCHEDULED, "planned", node="SKYSAT-C1")],
                         now=NOW + timedelta(seconds=1))
        store.transition([NewTransition(job.job_id, JobState.DISPATCHED, "sent", node="SKYSAT-C1", work_id="w1")],
                         now=NOW + timedelta(seconds=2))
        store.transition([NewTransition(job.job_id, JobState.SUCCEEDED, "done", node="SKYSAT-C1",
                                        result=JobResult(output=b"\x01\x02", output_bytes=2, detail="ok"))],
                         now=NOW + timedelta(seconds=3))
    with Store(db) as store:
        again = store.get(job.job_id)
        assert again.spec == job.spec and again.state is JobState.SUCCEEDED and again.work_id == "w1"
        assert again.result == JobResult(output=b"\x01\x02", output_bytes=2, detail="ok")
        trail = store.transitions(job.job_id)
        assert [(t.from_state, t.to_state) for t in trail] == [
            (None, JobState.PENDING), (JobState.PENDING, JobState.SCHEDULED),
            (JobState.SCHEDULED, JobState.DISPATCHED), (JobState.DISPATCHED, JobState.SUCCEEDED)]
        assert [t.time_utc for t in trail] == [NOW + timedelta(seconds=i) for i in range(4)]
        assert [t.seq for t in store.events_after(0)] == [t.seq for t in trail]
        # A retry after the restart finds the job; the same key for another job is refused.
        assert store.submit(_spec(source=CaptureSource(48.1, 11.6, 30.0)), now=NOW, request_id="r1") == (again, False)
        with pytest.raises(ConflictError, match="request_id"):
            store.submit(_spec(priority=5), now=NOW, request_id="r1")


def test_life_cycle_rules(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        job, _ = store.submit(_spec(), now=NOW)
        with pytest.raises(TransitionError, match="PENDING; it cannot become RUNNING"):
            store.transition([NewTransition(job.job_id, JobState.RUNNING, "x")], now=NOW)
        store.transition([NewTransition(job.job_id, JobState.CANCELLED, "bye")], now=NOW)
        for target in JobState:
            with pytest.raises(TransitionError):
                store.transition([NewTransition(job.job_id, target, "again")], now=NOW)
        # With a guard, a stale change is skipped instead of failing.
        (rec,) = store.transition([NewTransition(job.job_id, JobState.SCHEDULED, "late",
                                                 expect=frozenset({JobState.PENDING}))], now=NOW)
        assert rec is None
        with pytest.raises(NotFoundError):
            store.transition([NewTransition("job-missing", JobState.CANCELLED, "x")], now=NOW)
        assert store.get(job.job_id).state is JobState.CANCELLED


def test_concurrent_submits_are_group_committed(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        ids: list[str] = []
        lock = threading.Lock()
        seen: list[int] = []
        store.add_listener(lambda events: seen.extend(e.seq for e in events))
        start = threading.Barrier(8)

        def worker(w: int) -> None:
            start.wait()
            futures = [store.submit_async(_spec(), now=NOW, request_id=f"{w}-{i}") for i in range(50)]
            with lock:
                ids.extend(f.result()[0].job_id for f in futures)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 400
        assert len(store.list_jobs(limit=1000)) == 400
        assert store.commits < 400, "concurrent submits should share commits"
        assert seen == sorted(seen) and len(seen) == 400


def test_bad_specs_name_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model_id": "x"}, "model_id"), ({"priority": 0}, "priority"), ({"tiles": 0}, "tiles"),
        ({"input_bytes": -1}, "input_bytes"), ({"source": CaptureSource(99, 0)}, "capture.latitude_deg"),
        ({"deadline_utc": datetime(2023, 4, 20)}, "deadline"),
    ]
    for kw, field in cases:
        with pytest.raises(InputError, match=f"^{field}"):
            _spec(**kw)


def test_abandoned_submits_are_not_written_and_do_not_break_the_writer(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        futures = [store.submit_async(_spec(), now=NOW, request_id=f"r{i}") for i in range(300)]
        abandoned = {i for i, f in enumerate(futures) if f.cancel()}  # callers that gave up (timing decides)
        kept = {f.result()[0].job_id for i, f in enumerate(futures) if i not in abandoned}
        stored = {j.request_id: j.job_id for j in store.list_jobs(limit=1000)}
        assert set(stored.values()) == kept
        assert not {f"r{i}" for i in abandoned} & set(stored)
        assert store.submit(_spec(), now=NOW)[1]  # the writer is alive


def test_failing_requests_do_not_undo_the_rest_of_their_batch(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.submit(_spec(), now=NOW, request_id="dup")
        a = store.submit(_spec(), now=NOW)[0].job_id
        b = store.submit(_spec(), now=NOW)[0].job_id
        store.transition([NewTransition(b, JobState.CANCELLED, "test")], now=NOW)
        held, release = threading.Event(), threading.Event()

        def hold_first_batch(events: object) -> None:  # keeps the writer busy while the next batch queues up
            if not held.is_set():
                held.set()
                release.wait(10)

        store.add_listener(hold_first_batch)
        blocker = store.submit_async(_spec(), now=NOW, request_id="blocker")
        assert held.wait(10)
        commits = store.commits
        # Every third request reuses "dup" for a different job: ConflictError, rolled back to its savepoint.
        futures = [store.submit_async(_spec(priority=2 if i % 3 == 0 else 1), now=NOW,
                                      request_id="dup" if i % 3 == 0 else f"ok{i}") for i in range(30)]
        # A write that fails after its first change was applied: that change must be undone, nothing else.
        failing = store.transition_async([NewTransition(a, JobState.CANCELLED, "test"),
                                          NewTransition(b, JobState.SCHEDULED, "test")], now=NOW)
        futures += [store.submit_async(_spec(), now=NOW, request_id=f"ok{i}") for i in range(30, 33)]
        release.set()
        blocker.result()
        created = []
        with pytest.raises(TransitionError, match="CANCELLED"):
            failing.result()
        for i, fut in enumerate(futures):
            if i % 3 == 0 and i < 30:
                with pytest.raises(ConflictError, match="request_id"):
                    fut.result()
            else:
                created.append(fut.result()[0].job_id)
        assert store.commits == commits + 1, "the queued requests should form one batch"
        assert len(store.list_jobs(limit=1000)) == 4 + 23
        assert store.get(a).state is JobState.PENDING
        assert [t.to_state for t in store.transitions(a)] == [JobState.PENDING]
        for job_id in created:
            assert [t.to_state for t in store.transitions(job_id)] == [JobState.PENDING]
