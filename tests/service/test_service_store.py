"""The SQLite job store: schema versioning, life-cycle rules, group commit, persistence across reopen."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import random
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.store import (
    ACTIVE_STATES,
    MIGRATIONS,
    ConflictError,
    JobResult,
    JobSpec,
    JobState,
    NewTransition,
    NotFoundError,
    Placement,
    Store,
    StoredPlan,
    StoreError,
    TransitionError,
    new_job_id,
    to_ms,
)
from scheduler.types import CaptureSource, Hop, Plan, ScheduledJob, Unschedulable, UplinkSource
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


def _hold_writer(store: Store) -> tuple[threading.Event, threading.Event]:
    """Keep the writer busy in a listener (after the next commit) so that the requests queued meanwhile form
    one batch once ``release`` is set."""
    held, release = threading.Event(), threading.Event()

    def hold(events: object) -> None:
        if not held.is_set():
            held.set()
            release.wait(10)

    store.add_listener(hold)
    return held, release


def test_one_batch_tells_retries_from_conflicts_among_its_own_submits(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        held, release = _hold_writer(store)
        blocker = store.submit_async(_spec(), now=NOW, request_id="blocker")
        assert held.wait(10)
        commits = store.commits
        first = store.submit_async(_spec(), now=NOW, request_id="r")
        retry = store.submit_async(_spec(), now=NOW, request_id="r")  # the same request again
        other = store.submit_async(_spec(priority=7), now=NOW, request_id="r")  # another job, same key
        fresh = [store.submit_async(_spec(), now=NOW, request_id=f"f{i}") for i in range(5)]
        anonymous = store.submit_async(_spec(), now=NOW)
        release.set()
        blocker.result()
        job, created = first.result()
        assert created and retry.result() == (job, False)
        with pytest.raises(ConflictError, match=f"'r' was already used for a different job \\({job.job_id}"):
            other.result()
        new = [job, *(f.result()[0] for f in fresh), anonymous.result()[0]]
        assert store.commits == commits + 1
        # What the acknowledgements said is what the store holds: rows, states, times, transition seqs.
        assert [store.get(j.job_id) for j in new] == new
        assert [j.row for j in new] == sorted(j.row for j in new)
        seqs = [store.transitions(j.job_id)[0].seq for j in new]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert len(store.list_jobs(limit=100)) == 1 + len(new)


def test_deferred_submits_are_made_checked_and_answered_by_the_writer_one_by_one(tmp_path: Path) -> None:
    """The server's path: the writer makes each spec, a refused one fails alone and is never written, and the
    future carries finish(job, created); retries and conflicts behave as with ready-made specs."""
    with Store(tmp_path / "s.db") as store:
        held, release = _hold_writer(store)
        blocker = store.submit_async(_spec(), now=NOW, request_id="blocker")
        assert held.wait(10)
        commits = store.commits
        writer_threads: set[str] = set()

        def make(priority: int, fingerprint: str = "") -> Any:
            def prepare() -> tuple[JobSpec, str]:
                writer_threads.add(threading.current_thread().name)
                if priority < 0:
                    raise InputError(f"priority: must be in [1, 1000], got {priority}")
                return _spec(priority=priority), fingerprint
            return prepare

        def finish(job: Any, created: bool) -> tuple[str, str, bool]:
            return "reply", job.job_id, created

        ok = store.submit_deferred_async(make(3, "fp-a"), now=NOW, request_id="a", finish=finish)
        bad = store.submit_deferred_async(make(-1), now=NOW, request_id="bad", finish=finish)
        retry = store.submit_deferred_async(make(3, "fp-a"), now=NOW, request_id="a", finish=finish)
        conflict = store.submit_deferred_async(make(4, "fp-b"), now=NOW, request_id="a", finish=finish)
        plain = store.submit_async(_spec(), now=NOW, request_id="plain")
        anonymous = store.submit_deferred_async(make(5), now=NOW, finish=finish)
        release.set()
        blocker.result()
        tag, job_id, created = ok.result()
        assert tag == "reply" and created and retry.result() == ("reply", job_id, False)
        with pytest.raises(InputError, match=r"^priority: must be in"):
            bad.result()
        with pytest.raises(ConflictError, match="request_id"):
            conflict.result()
        assert plain.result()[1] and anonymous.result()[2]
        assert writer_threads == {"store-writer"}
        assert store.commits == commits + 1, "the queued submits should form one batch"
        stored = store.get(job_id)
        assert stored.spec.priority == 3 and stored.request_id == "a" and stored.state is JobState.PENDING
        assert store.get(anonymous.result()[1]).spec.priority == 5
        assert "bad" not in {j.request_id for j in store.list_jobs(limit=100)}
        assert len(store.list_jobs(limit=100)) == 4
        with pytest.raises(InputError, match="request_id: at most"):
            store.submit_deferred_async(make(1), now=NOW, request_id="x" * 1000, finish=finish)


def test_a_deferred_submit_whose_reply_fails_is_still_stored(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        def broken(job: Any, created: bool) -> None:
            raise RuntimeError("reply could not be made")

        fut = store.submit_deferred_async(lambda: (_spec(), ""), now=NOW, request_id="r", finish=broken)
        with pytest.raises(RuntimeError, match="reply could not be made"):
            fut.result()
        assert [j.request_id for j in store.list_jobs(limit=10)] == ["r"]
        assert store.submit(_spec(), now=NOW, request_id="r")[1] is False  # a retry finds it


def test_ids_continue_after_another_connection_wrote(tmp_path: Path) -> None:
    # The writer numbers rows itself (explicit consecutive ids); a row written behind its back makes its next
    # insert collide: the batch is redone with fresh ids and every submit still succeeds.
    db = tmp_path / "s.db"
    with Store(db) as store:
        before = store.submit(_spec(), now=NOW, request_id="a")[0]
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("INSERT INTO jobs (job_id, spec, model_id, state, submit_ms, update_ms) "
                      "VALUES ('job-external', ?, 'tiny@1', 'CANCELLED', 0, 0)", (_spec().to_json(),))
        other.execute("INSERT INTO transitions (job_id, to_state, time_ms, reason) "
                      "VALUES ('job-external', 'CANCELLED', 0, 'external')")
        other.close()
        futures = [store.submit_async(_spec(), now=NOW, request_id=f"b{i}") for i in range(20)]
        after = [f.result()[0] for f in futures]
        external = store.get("job-external")
        assert len({j.row for j in [before, external, *after]}) == 22
        assert all(j.row > external.row for j in after)
        assert [store.get(j.job_id) for j in after] == after
        seqs = [t.seq for t in store.events_after(0)]
        assert seqs == sorted(seqs) and len(seqs) == 22
        # Transitions number their rows the same way.
        (rec,) = store.transition([NewTransition(after[0].job_id, JobState.CANCELLED, "x")], now=NOW)
        assert rec is not None and rec.seq == store.last_seq() == seqs[-1] + 1


def test_many_changes_in_one_call_equal_the_same_changes_one_by_one(tmp_path: Path) -> None:
    start = NOW + timedelta(minutes=5)
    p1 = Placement("SKYSAT-C1", start, start + timedelta(seconds=1.25), start + timedelta(minutes=9))
    p2 = Placement("SKYSAT-C2", start + timedelta(minutes=1), start + timedelta(minutes=2), start + timedelta(hours=1))
    script = [
        NewTransition("?", JobState.SCHEDULED, "planned", node="SKYSAT-C1", placement=p1),
        NewTransition("?", JobState.SCHEDULED, "moved", node="SKYSAT-C2", placement=p2),
        NewTransition("?", JobState.DISPATCHED, "sent", node="SKYSAT-C2", work_id="w-1"),
        NewTransition("?", JobState.RUNNING, "running", node="SKYSAT-C2"),
        NewTransition("?", JobState.PENDING, "node-lost: gone", work_id=""),  # clears the placement
        NewTransition("?", JobState.CANCELLED, "stale", expect=frozenset({JobState.SCHEDULED})),  # skipped
        NewTransition("?", JobState.SCHEDULED, "planned again", node="SKYSAT-C1", placement=p1),
        NewTransition("?", JobState.DISPATCHED, "sent again", node="SKYSAT-C1", work_id="w-2"),
        NewTransition("?", JobState.SUCCEEDED, "done", node="SKYSAT-C1",
                      result=JobResult(location="s3://r", output=b"\x00\x01", output_bytes=2, detail="ok")),
    ]
    with Store(tmp_path / "s.db") as store:
        together, apart, bystander = (store.submit(_spec(), now=NOW)[0] for _ in range(3))
        done = store.transition([dataclasses.replace(ch, job_id=together.job_id) for ch in script] +
                                [NewTransition(bystander.job_id, JobState.SCHEDULED, "x", node="SKYSAT-C3")], now=start)
        singles = [store.transition([dataclasses.replace(ch, job_id=apart.job_id)], now=start)[0] for ch in script]
        assert [r is None for r in done[:-1]] == [r is None for r in singles] == [False] * 5 + [True] + [False] * 3

        def view(job_id: str) -> tuple[object, ...]:
            j = store.get(job_id)
            trail = [(t.from_state, t.to_state, t.reason, t.node, t.time_utc) for t in store.transitions(job_id)]
            return j.state, j.reason, j.node, j.placement, j.result, j.work_id, j.update_utc, trail

        assert view(together.job_id) == view(apart.job_id)
        assert store.get(bystander.job_id).node == "SKYSAT-C3"
        # One change refused: the whole call is undone, including the changes listed before it.
        with pytest.raises(TransitionError):
            store.transition([NewTransition(bystander.job_id, JobState.DISPATCHED, "y", node="SKYSAT-C3"),
                              NewTransition(together.job_id, JobState.CANCELLED, "too late")], now=start)
        assert store.get(bystander.job_id).state is JobState.SCHEDULED


def test_nul_characters_survive_the_bulk_statements(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        job, created = store.submit(_spec(), now=NOW, request_id="a\x00b")
        assert created and store.get(job.job_id).request_id == "a\x00b"
        assert store.submit(_spec(), now=NOW, request_id="a\x00b") == (job, False)
        assert store.submit(_spec(), now=NOW, request_id="a")[1]
        (rec,) = store.transition([NewTransition(job.job_id, JobState.CANCELLED, "why\x00not")], now=NOW)
        assert rec is not None and store.get(job.job_id).reason == "why\x00not"
        with pytest.raises(NotFoundError):
            store.transition([NewTransition("job-\x00", JobState.CANCELLED, "x")], now=NOW)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_job_ids_are_base32_of_time_and_randomness(now: datetime) -> None:
    job_id = new_job_id(now)
    raw = base64.b32decode(job_id.removeprefix("job-").upper() + "=")
    assert len(raw) == 14 and int.from_bytes(raw[:6], "big") == to_ms(now)
    assert job_id == "job-" + base64.b32encode(raw).decode().rstrip("=").lower()
    assert new_job_id(now) != job_id


@pytest.mark.parametrize("seed", range(4))
def test_active_jobs_in_memory_equal_the_stored_ones(tmp_path: Path, seed: int) -> None:
    # The planning loop reads active jobs from the store's in-memory copy; it must be exactly what a query of
    # the committed rows gives, whatever mix of writes (and refused writes) went into the batches.
    rng = random.Random(seed)
    nodes = ["SKYSAT-C1", "SKYSAT-C2", ""]
    t0 = NOW + timedelta(minutes=1)

    def placement() -> Placement:
        start = t0 + timedelta(seconds=rng.uniform(0, 3600))
        return Placement(rng.choice(nodes), start, start + timedelta(seconds=rng.uniform(0.0001, 60)),
                         start + timedelta(seconds=rng.uniform(60, 600)))

    def random_change(job_id: str) -> NewTransition:
        to = rng.choice(list(JobState))
        return NewTransition(job_id, to, f"r{rng.randrange(9)}", node=rng.choice(nodes),
                             placement=placement() if rng.random() < 0.5 else None,
                             result=JobResult(location="x", output=b"\x00") if rng.random() < 0.2 else None,
                             expect=frozenset(rng.sample(list(JobState), 3)) if rng.random() < 0.3 else None,
                             work_id=rng.choice([None, "", "w1"]))

    db = tmp_path / "s.db"
    with Store(db) as store:
        ids: list[str] = []
        for _round in range(25):
            futures: list[concurrent.futures.Future[Any]] = []
            for _ in range(rng.randrange(1, 12)):
                kind = rng.random()
                if kind < 0.35 or not ids:
                    futures.append(store.submit_async(_spec(priority=rng.randrange(1, 4)), now=t0,
                                                      request_id=rng.choice(["", f"q{rng.randrange(40)}"])))
                elif kind < 0.8:
                    changes = [random_change(rng.choice(ids)) for _ in range(rng.randrange(1, 4))]
                    futures.append(store.transition_async(changes, now=t0 + timedelta(seconds=rng.randrange(99))))
                elif kind < 0.9:
                    pool = ThreadPoolExecutor(1)
                    futures.append(pool.submit(store.update_placements, {rng.choice(ids): placement()}))
                    pool.shutdown(wait=False)
                else:
                    pool = ThreadPoolExecutor(1)
                    futures.append(pool.submit(store.set_reasons, {rng.choice(ids): f"why {rng.randrange(5)}"}))
                    pool.shutdown(wait=False)
            for fut in futures:
                try:
                    value = fut.result()
                except (ConflictError, TransitionError):
                    continue
                if isinstance(value, tuple):
                    ids.append(value[0].job_id)
            assert store.active_jobs() == store.list_jobs(states=ACTIVE_STATES, limit=10**9)
        assert len(store.active_jobs()) > 0 and len(store.list_jobs(limit=10**9)) > len(store.active_jobs())
        before = store.active_jobs()
    with Store(db) as store:
        assert store.active_jobs() == before


def test_saved_plans_round_trip_and_plans_of_the_older_form_still_load(tmp_path: Path) -> None:
    hop = Hop("gs:Svalbard", "SKYSAT-C1", 10.0, 12.5, 1_000, 3)
    plan = Plan(policy="greedy", objective=7.0, bound=9.0, wall_s=0.25, status="FEASIBLE", notes=("n1",),
                scheduled=(ScheduledJob("a", "SKYSAT-C1", 20.0, 30.0, 90.0, (hop,), (), (), 0.5),),
                unschedulable=tuple(Unschedulable(f"u{i}", "capacity: no slot free" if i % 3 else "deadline: late")
                                    for i in range(7)))
    stored = StoredPlan(epoch_utc=NOW, planned_at_utc=NOW + timedelta(seconds=5), plan=plan)
    with Store(tmp_path / "s.db") as store:
        store.save_plan(stored)
        assert store.load_plan() == stored
        body = json.loads(sqlite3.connect(tmp_path / "s.db").execute("SELECT body FROM plans").fetchone()[0])
        assert body["reasons"] == ["deadline: late", "capacity: no slot free"]  # each reason written once
    # A plan saved by an older version (one object per unschedulable job, no "reasons") loads the same.
    body["unschedulable"] = [{"job_id": u.job_id, "reason": u.reason} for u in plan.unschedulable]
    del body["reasons"]
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("UPDATE plans SET body = ?", (json.dumps(body),))
    conn.commit()
    conn.close()
    with Store(tmp_path / "s.db") as store:
        assert store.load_plan() == stored
