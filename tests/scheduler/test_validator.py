"""The independent validator: hand-made valid plans pass, and each kind of violation is caught.

Plans here are written by hand from the hand-made ``tiny_plan`` (contact
windows known exactly), not produced by the feasibility code, so a shared
mistake cannot make both agree.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from scheduler_cases import SAT_A, SAT_B, SAT_C, TINY_MODEL, tiny_job, tiny_problem

from orbit.contact_plan import ContactPlan
from scheduler.types import (
    BUILTIN_PROFILES,
    CaptureSource,
    Hop,
    Job,
    OnboardSource,
    Plan,
    Problem,
    ScheduledJob,
    Unschedulable,
    UplinkSource,
)
from scheduler.validator import validate_plan

ORIN = BUILTIN_PROFILES["jetson-orin"]
OUT_BYTES = 1_000_000
IN_BYTES = 100_000
RUN_S = 1.0  # 160 tiles x 12.5 GFLOP / 2000 GFLOP/s
RUN_WH = RUN_S / 3600 * (ORIN.active_power_w - ORIN.idle_power_w) / ORIN.slots


def cidx(problem: Problem, src: str, dst: str, start_s: float) -> int:
    for i, c in enumerate(problem.contact_plan.contacts()):
        if (c.src, c.dst, c.start_s) == (src, dst, start_s):
            return i
    raise AssertionError((src, dst, start_s))


@pytest.fixture(scope="module")
def problem(tiny_plan: ContactPlan) -> Problem:
    """j1: onboard B, run on B, down via B->S2 at 3000 s. j2: uplink S1 -> A, run on A, down A->S1."""
    return tiny_problem(tiny_plan, [tiny_job("j1", priority=2),
                                    tiny_job("j2", source=UplinkSource("S1"), submit_s=50.0),
                                    tiny_job("j3", deadline_s=90.0)])


@pytest.fixture(scope="module")
def plan(problem: Problem) -> Plan:
    down_s = OUT_BYTES * 8 / 220e6
    up_s = IN_BYTES * 8 / 2e6
    j1 = ScheduledJob("j1", SAT_B, 10.0, 10.0 + RUN_S, 3000.0 + down_s, (),
                      (Hop(SAT_B, "gs:S2", 3000.0, 3000.0 + down_s, OUT_BYTES, cidx(problem, SAT_B, "gs:S2", 3000.0)),),
                      energy_wh=RUN_WH)
    t_in = 100.0 + up_s
    j2 = ScheduledJob("j2", SAT_A, t_in, t_in + RUN_S, t_in + RUN_S + down_s,
                      (Hop("gs:S1", SAT_A, 100.0, t_in, IN_BYTES, cidx(problem, "gs:S1", SAT_A, 100.0)),),
                      (Hop(SAT_A, "gs:S1", t_in + RUN_S, t_in + RUN_S + down_s, OUT_BYTES,
                           cidx(problem, SAT_A, "gs:S1", 100.0)),),
                      energy_wh=RUN_WH)
    return Plan("hand", (j1, j2), (Unschedulable("j3", "deadline: no downlink before 90 s"),), 3.0, 3.0)


def with_job(plan: Plan, job_id: str, **changes: object) -> Plan:
    return replace(plan, scheduled=tuple(replace(s, **changes) if s.job_id == job_id else s  # type: ignore[arg-type]
                                         for s in plan.scheduled))


def one_error(problem: Problem, plan: Plan, *fragments: str) -> None:
    errors = validate_plan(problem, plan)
    assert errors, "violation not caught"
    assert any(all(f in e for f in fragments) for e in errors), errors


def test_hand_made_plan_is_valid(problem: Problem, plan: Plan) -> None:
    assert validate_plan(problem, plan) == []


def test_every_job_exactly_once(problem: Problem, plan: Plan) -> None:
    one_error(problem, replace(plan, unschedulable=()), "'j3'", "missing")
    one_error(problem, replace(plan, unschedulable=(*plan.unschedulable, Unschedulable("j1", "capacity: x"))),
              "'j1'", "more than once")
    one_error(problem, replace(plan, unschedulable=(*plan.unschedulable, Unschedulable("zz", "capacity: x"))),
              "'zz'", "not in the problem")
    one_error(problem, replace(plan, unschedulable=(Unschedulable("j3", "because"),)), "'j3'", "known code")


def test_node_must_have_a_profile(problem: Problem, plan: Plan) -> None:
    no_c = replace(problem, profiles_by_node={k: v for k, v in problem.profiles_by_node.items() if k != SAT_C})
    one_error(no_c, with_job(plan, "j1", node=SAT_C), "'j1'", SAT_C, "no node profile")
    one_error(problem, with_job(plan, "j1", node="Mars"), "'j1'", "not a known node")


def test_times(problem: Problem, plan: Plan) -> None:
    one_error(problem, with_job(plan, "j2", start_s=40.0, end_s=40.0 + RUN_S), "'j2'", "before its submit time")
    one_error(problem, with_job(plan, "j2", start_s=100.1, end_s=100.1 + RUN_S), "'j2'", "before its input arrives")
    one_error(problem, with_job(plan, "j1", end_s=10.0 + 2 * RUN_S), "'j1'", "the model needs 1.000 s")
    j1 = plan.scheduled[0]
    one_error(problem, with_job(plan, "j1", arrival_s=j1.arrival_s + 5), "'j1'", "differs from the last output hop")
    late = replace(problem, jobs=tuple(replace(j, deadline_s=2000.0) if j.job_id == "j1" else j
                                       for j in problem.jobs))
    one_error(late, plan, "'j1'", "after the deadline")


def test_nothing_happens_before_now(problem: Problem, plan: Plan) -> None:
    later = replace(problem, now_s=100.2)  # j2's uplink started at 100 s
    one_error(later, plan, "'j2'", "hop gs:S1->", "before now")
    one_error(later, plan, "'j1'", "starts at 10.000 s, before now")
    assert validate_plan(replace(later, fixed=plan.scheduled), plan) == []  # running jobs are kept as they are


def test_hops(problem: Problem, plan: Plan) -> None:
    j2 = plan.scheduled[1]
    hop = j2.input_route[0]
    wrong_contact = replace(hop, contact=cidx(problem, SAT_A, "gs:S1", 100.0))
    one_error(problem, with_job(plan, "j2", input_route=(wrong_contact,)), "input_route[0]", "does not match")
    early = replace(hop, start_s=90.0, end_s=90.4)
    one_error(problem, with_job(plan, "j2", input_route=(early,)), "input_route[0]", "outside contact")
    short = replace(hop, end_s=hop.start_s + 0.1)
    one_error(problem, with_job(plan, "j2", input_route=(short,), start_s=100.1, end_s=100.1 + RUN_S),
              "input_route[0]", "need 0.400 s")
    one_error(problem, with_job(plan, "j2", input_route=(replace(hop, bytes=10),)), "expected 100000")
    one_error(problem, with_job(plan, "j2", input_route=(replace(hop, contact=999),)), "does not exist")


def test_routes_chain_from_source_to_destination(problem: Problem, plan: Plan) -> None:
    j1 = plan.scheduled[0]
    # Input of j1 is on B: a route starting at S1 is not the job's source.
    hop_in = Hop("gs:S1", SAT_A, 100.0, 100.4, IN_BYTES, cidx(problem, "gs:S1", SAT_A, 100.0))
    one_error(problem, with_job(plan, "j1", input_route=(hop_in,), node=SAT_A, start_s=101.0, end_s=102.0),
              "input_route", "the job's input is on")
    # Output chained B -> A (ISL) then a hop that starts at B again.
    isl = Hop(SAT_B, SAT_A, 20.0, 20.008, OUT_BYTES, cidx(problem, SAT_B, SAT_A, 0.0))
    down = Hop(SAT_B, "gs:S2", 3000.0, 3000.037, OUT_BYTES, cidx(problem, SAT_B, "gs:S2", 3000.0))
    one_error(problem, with_job(plan, "j1", output_route=(isl, down), arrival_s=3000.037), "output_route[1]",
              "previous hop ended")
    # Output before the run ends.
    one_error(problem, with_job(plan, "j1", start_s=3000.0, end_s=3001.0), "output_route", "before the job ends")
    # Destination.
    dest = replace(problem, jobs=tuple(replace(j, destination="S1") if j.job_id == "j1" else j for j in problem.jobs))
    one_error(dest, plan, "'j1'", "destination is 'gs:S1'")
    one_error(problem, with_job(plan, "j1", output_route=(), arrival_s=j1.end_s), "output_route", "empty")


def test_capacity(tiny_plan: ContactPlan) -> None:
    """Two 100 MB uplinks through one 150 MB pass: each alone fits, together they do not."""
    big = 100_000_000
    jobs = [tiny_job(f"u{i}", source=UplinkSource("S1"), input_bytes=big) for i in range(2)]
    problem = tiny_problem(tiny_plan, jobs)
    up = cidx(problem, "gs:S1", SAT_A, 100.0)
    down = cidx(problem, SAT_A, "gs:S1", 100.0)
    sched = []
    for i in range(2):
        t_in = 100.0 + big * 8 / 2e6  # 500 s, concurrent sharing of the pass is allowed
        start = t_in + i * RUN_S
        out = Hop(SAT_A, "gs:S1", start + RUN_S, start + RUN_S + 8e6 / 220e6, OUT_BYTES, down)
        sched.append(ScheduledJob(f"u{i}", SAT_A, start, start + RUN_S, out.end_s,
                                  (Hop("gs:S1", SAT_A, 100.0, t_in, big, up),), (out,), energy_wh=RUN_WH))
    plan = Plan("hand", tuple(sched), (), 2.0, 2.0)
    one_error(problem, plan, f"contact {up}", "200000000 bytes routed, capacity 150000000")
    alone = Plan("hand", (sched[0],), (Unschedulable("u1", "capacity: pass full"),), 1.0, 1.0)
    assert validate_plan(problem, alone) == []


def test_slots_memory_and_model(tiny_plan: ContactPlan) -> None:
    jobs = [tiny_job(f"k{i}") for i in range(3)]
    problem = tiny_problem(tiny_plan, jobs)
    down = cidx(problem, SAT_B, "gs:S2", 3000.0)

    def run(job_id: str, start: float, **kw: object) -> ScheduledJob:
        out = Hop(SAT_B, "gs:S2", 3000.0, 3000.0 + 8e6 / 220e6, OUT_BYTES, down)
        return ScheduledJob(job_id, SAT_B, start, start + RUN_S, out.end_s, (), (out,), energy_wh=RUN_WH,
                            **kw)  # type: ignore[arg-type]

    two = Plan("hand", (run("k0", 10.0), run("k1", 10.5), run("k2", 11.0)), (), 3.0, 3.0)
    assert validate_plan(problem, two) == []  # never more than 2 at once (back-to-back is fine)
    three = Plan("hand", (run("k0", 10.0), run("k1", 10.2), run("k2", 10.4)), (), 3.0, 3.0)
    one_error(problem, three, f"node '{SAT_B}'", "3 jobs run", "2 slot(s)")
    small = replace(problem, profiles_by_node={**problem.profiles_by_node,
                                               SAT_B: replace(problem.profiles_by_node[SAT_B], memory_bytes=10**6)})
    one_error(small, two, f"node '{SAT_B}'", "memory")
    # Model not resident: needs an uplink to B (S2 pass at 3000 s, 160 s for 40 MB).
    bare = tiny_problem(tiny_plan, jobs, resident=False)
    one_error(bare, two, "'k0'", "neither resident")
    up = cidx(bare, "gs:S2", SAT_B, 3000.0)
    model_hop = Hop("gs:S2", SAT_B, 3000.0, 3160.0, TINY_MODEL.size_bytes, up)
    out2 = Hop(SAT_B, "gs:S2", 3400.0, 3400.0 + 8e6 / 220e6, OUT_BYTES, down)
    late = ScheduledJob("k0", SAT_B, 3200.0, 3200.0 + RUN_S, out2.end_s, (), (out2,), (model_hop,), RUN_WH)
    shared = replace(late, job_id="k1", start_s=3300.0, end_s=3300.0 + RUN_S, model_route=())
    ok = Plan("hand", (late, shared), (Unschedulable("k2", "capacity: x"),), 2.0, 2.0)
    assert validate_plan(bare, ok) == []  # k1 uses the model k0 brought up
    early = replace(shared, start_s=3100.0, end_s=3100.0 + RUN_S)
    one_error(bare, replace(ok, scheduled=(late, early)), "'k1'", "before model")


def test_energy_and_objective(problem: Problem, plan: Plan) -> None:
    one_error(problem, with_job(plan, "j1", energy_wh=1.0), "'j1'", "energy_wh")
    weak = replace(ORIN, battery_wh=0.02, min_soc=0.5, solar_w=0.0, idle_power_w=0.0, initial_soc=0.9,
                   resident_models=(TINY_MODEL.model_id,))
    # 0.008 Wh headroom, no sun, no idle draw; a 1 s run at (40 - 0) W / 2 slots costs 0.0056 Wh:
    # fine once, not ten times over.
    drained = replace(problem, profiles_by_node={**problem.profiles_by_node, SAT_B: weak})
    assert not [e for e in validate_plan(drained, plan) if "battery" in e]
    long_run = replace(drained, jobs=tuple(replace(j, tiles=1600) if j.job_id == "j1" else j for j in problem.jobs))
    p10 = with_job(plan, "j1", end_s=10.0 + 10 * RUN_S, energy_wh=10 * RUN_WH)
    one_error(long_run, p10, f"node '{SAT_B}'", "below the minimum")
    one_error(problem, replace(plan, objective=5.0), "objective")


def test_fixed_placements_kept(problem: Problem, plan: Plan) -> None:
    j1 = plan.scheduled[0]
    fixed = replace(problem, fixed=(j1,))
    assert validate_plan(fixed, plan) == []
    one_error(fixed, with_job(plan, "j1", start_s=20.0, end_s=21.0), "'j1'", "fixed placement")
    dropped = replace(plan, scheduled=plan.scheduled[1:],
                      unschedulable=(*plan.unschedulable, Unschedulable("j1", "capacity: x")), objective=1.0)
    one_error(fixed, dropped, "'j1'", "was dropped")


def test_bent_pipe_ground_node(problem: Problem) -> None:
    """Bent-pipe: data downlinked, processed on the ground at ground_gflops, result already on the ground."""
    down_s = IN_BYTES * 8 / 220e6
    hop = Hop(SAT_B, "gs:S2", 3000.0, 3000.0 + down_s, IN_BYTES, cidx(problem, SAT_B, "gs:S2", 3000.0))
    run_s = 160 * 12.5 / problem.ground_gflops
    sj = ScheduledJob("j1", "ground", hop.end_s, hop.end_s + run_s, hop.end_s + run_s, (hop,), ())
    others = (Unschedulable("j2", "capacity: x"), Unschedulable("j3", "deadline: x"))
    plan = Plan("bentpipe", (sj,), others, 2.0, 2.0)
    assert validate_plan(problem, plan) == []
    one_error(problem, replace(plan, scheduled=(replace(sj, arrival_s=sj.end_s + 10),)), "ground run's end")
    one_error(problem, replace(plan, scheduled=(replace(sj, output_route=(hop,)),)), "expected no hops")


def test_capture_source(real_problem: Problem) -> None:
    """A capture job must start where and after a satellite actually saw the target."""
    from scheduler.feasibility import build_candidates
    from scheduler.routing import retime_hops

    job = next(j for j in real_problem.jobs if j.job_id == "capture")
    assert isinstance(job.source, CaptureSource)
    cand = next(c for c in build_candidates(replace(real_problem, jobs=(job,))).candidates if not c.input_route)
    end = cand.release_s + cand.duration_s
    out = retime_hops(real_problem, cand.output_route, end)
    assert out is not None
    sj = ScheduledJob(job.job_id, cand.node, cand.release_s, end, out[-1].end_s, (), out, cand.model_route,
                      cand.energy_wh)
    problem = replace(real_problem, jobs=(job,))
    good = Plan("x", (sj,), (), float(job.priority), float(job.priority))
    assert validate_plan(problem, good) == []
    early = replace(sj, start_s=sj.start_s - 60.0, end_s=sj.end_s - 60.0)
    one_error(problem, replace(good, scheduled=(early,)), "has not imaged the target")


def test_onboard_source_satellite(problem: Problem, plan: Plan) -> None:
    moved = replace(problem, jobs=tuple(replace(j, source=OnboardSource(SAT_A)) if j.job_id == "j1" else j
                                        for j in problem.jobs))
    one_error(moved, plan, "'j1'", f"the job's input is on '{SAT_A}'")


def test_uplink_from_any_or_named_station(problem: Problem, plan: Plan) -> None:
    any_station = replace(problem, jobs=tuple(replace(j, source=UplinkSource()) if j.job_id == "j2" else j
                                              for j in problem.jobs))
    assert validate_plan(any_station, plan) == []
    from_s2 = replace(problem, jobs=tuple(replace(j, source=UplinkSource("S2")) if j.job_id == "j2" else j
                                          for j in problem.jobs))
    one_error(from_s2, plan, "'j2'", "uplinked from 'gs:S2'")
    job = Job("x", TINY_MODEL.model_id, 1, 0.0, 100.0, 1, 1, 1, OnboardSource(SAT_A))
    with_x = replace(problem, jobs=(*problem.jobs, job))
    one_error(with_x, plan, "'x'", "missing")
