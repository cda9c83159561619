"""Independent plan validator: does a plan respect every rule of the contract?

This module deliberately shares no code with routing, feasibility or the
planners: it recomputes link rates, contact capacities, compute durations and
the battery simulation from the :class:`~scheduler.types.Problem` and its
contact plan alone, so a bug in the planning path cannot hide itself here.
Every other test calls :func:`validate_plan` on the plans it produces.

Rules checked (``notes/scheduler.md``): every job exactly once; known node with
a profile (or ``ground`` for bent-pipe); start after submit, input arrival and
model arrival; duration; result arrival by the deadline, equal to the last
output hop; every hop inside a real contact between exactly those nodes, long
enough for its bytes, chained in time and space from the job's source to the
node and from the node to the (destination) station; bytes per contact within
capacity; slots; memory; exact energy simulation; fixed placements kept;
objective consistent; reasons carry a known code.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable

from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT, Contact
from scheduler.types import (
    CaptureSource,
    Hop,
    Job,
    NodeProfile,
    OnboardSource,
    Plan,
    Problem,
    ScheduledJob,
    UplinkSource,
    gflop_per_inference,
)

__all__ = ["REASON_CODES", "validate_plan"]

REASON_CODES = ("unknown-model", "no-contact", "model-uplink", "energy", "capacity", "deadline", "no-compute-node")
GROUND_NODE = "ground"

TIME_TOL_S = 1e-3  # the contract's 1 ms tolerance on times
ENERGY_TOL_WH = 1e-6


class _Checker:
    def __init__(self, problem: Problem, plan: Plan, tol_s: float) -> None:
        self.problem = problem
        self.plan = plan
        self.tol = tol_s
        self.errors: list[str] = []
        cp = problem.contact_plan
        self.contacts: list[Contact] = cp.contacts()
        self.station_class = {f"gs:{s.name}": s.station_class for s in cp.stations}
        self.satellites = set(cp.constellation.names)
        self.jobs = {j.job_id: j for j in problem.jobs}
        self.profiles_by_name = {p.name: p for p in problem.profiles_by_node.values()}
        self._rates: dict[int, float] = {}
        self._capture_cache: dict[tuple[float, float, float], list[tuple[str, float]]] = {}

    def err(self, msg: str) -> None:
        self.errors.append(msg)

    # -- physics, recomputed here -------------------------------------------------------------
    def rate_bps(self, ci: int) -> float:
        if ci not in self._rates:
            c = self.contacts[ci]
            prof = self.problem.profiles_by_node
            if c.kind == "ground_up":
                p = prof.get(c.dst)
                r = p.uplink_rate_bps(self.station_class.get(c.src, "default")) if p else 0.0
            elif c.kind == "ground_down":
                p = prof.get(c.src)
                r = p.downlink_rate_bps(self.station_class.get(c.dst, "default")) if p else 0.0
            else:
                a, b = prof.get(c.src), prof.get(c.dst)
                r = min(a.isl_bps, b.isl_bps) if a and b else 0.0
            self._rates[ci] = r
        return self._rates[ci]

    def capacity_bytes(self, ci: int) -> int:
        c = self.contacts[ci]
        return math.floor(self.rate_bps(ci) * (c.end_s - c.start_s) / 8.0)

    def duration_s(self, job: Job, node: str) -> float:
        model = self.problem.models[job.model_id]
        gflop = gflop_per_inference(model, self.profiles_by_name)
        if node == GROUND_NODE:
            return job.tiles * gflop / self.problem.ground_gflops
        return job.tiles * gflop / self.problem.profiles_by_node[node].compute_gflops

    def capture_events(self, src: CaptureSource) -> list[tuple[str, float]]:
        """``(satellite, tca_s)`` of every pass over the capture target (all targets computed in one call)."""
        key = (src.latitude_deg, src.longitude_deg, src.min_elevation_deg)
        if key not in self._capture_cache:
            from orbit.passes import target_passes

            keys = sorted({key} | {(j.source.latitude_deg, j.source.longitude_deg, j.source.min_elevation_deg)
                                   for j in self.problem.jobs if isinstance(j.source, CaptureSource)})
            cp = self.problem.contact_plan
            memo = target_passes(cp.constellation, keys, cp.start_utc, cp.duration_s)
            for k in keys:
                self._capture_cache[k] = list(memo[k])
        return self._capture_cache[key]

    # -- routes ----------------------------------------------------------------------------------
    def check_route(self, label: str, hops: tuple[Hop, ...], size_bytes: int) -> bool:
        """Hop-level checks and chaining; True when the route is well formed."""
        ok = True
        for k, h in enumerate(hops):
            where = f"{label}[{k}]"
            if not 0 <= h.contact < len(self.contacts):
                self.err(f"{where}: contact index {h.contact} does not exist ({len(self.contacts)} contacts)")
                ok = False
                continue
            c = self.contacts[h.contact]
            cname = f"contact {h.contact} ({c.src}->{c.dst} {c.start_s:.3f}-{c.end_s:.3f} s)"
            if (h.src, h.dst) != (c.src, c.dst):
                self.err(f"{where}: hop {h.src}->{h.dst} does not match {cname}")
                ok = False
            if h.start_s < c.start_s - self.tol or h.end_s > c.end_s + self.tol:
                self.err(f"{where}: hop {h.start_s:.3f}-{h.end_s:.3f} s lies outside {cname}")
                ok = False
            if h.bytes != size_bytes:
                self.err(f"{where}: carries {h.bytes} bytes, expected {size_bytes}")
                ok = False
            rate = self.rate_bps(h.contact)
            if rate <= 0.0:
                self.err(f"{where}: {cname} is not usable (rate 0: an end has no node profile)")
                ok = False
            elif h.end_s - h.start_s < h.bytes * 8.0 / rate - self.tol:
                self.err(f"{where}: {h.bytes} bytes need {h.bytes * 8.0 / rate:.3f} s on {cname} at "
                         f"{rate:g} bit/s, hop lasts {h.end_s - h.start_s:.3f} s")
                ok = False
            if h.end_s < h.start_s:
                self.err(f"{where}: ends before it starts")
                ok = False
            if k > 0:
                prev = hops[k - 1]
                if h.src != prev.dst:
                    self.err(f"{where}: starts at {h.src!r} but the previous hop ended at {prev.dst!r}")
                    ok = False
                if h.start_s < prev.end_s - self.tol:
                    self.err(f"{where}: starts at {h.start_s:.3f} s before the previous hop ends "
                             f"({prev.end_s:.3f} s)")
                    ok = False
        return ok

    def check_input_route(self, sj: ScheduledJob, job: Job) -> float:
        """Checks the input route's ends; returns the time the input is on the node."""
        label = f"job {sj.job_id!r}: input_route"
        hops = sj.input_route
        self.check_route(label, hops, job.input_bytes)
        src = job.source
        origin = hops[0].src if hops else sj.node
        t_first = hops[0].start_s if hops else sj.start_s
        if isinstance(src, UplinkSource):
            want = None if src.station is None else f"gs:{src.station.removeprefix('gs:')}"
            if want is not None and origin != want and not (sj.node == GROUND_NODE and not hops):
                self.err(f"{label}: starts at {origin!r}, the job's input is uplinked from {want!r}")
            elif want is None and not origin.startswith("gs:") and not (sj.node == GROUND_NODE and not hops):
                self.err(f"{label}: starts at {origin!r}, the job's input is uplinked from a ground station")
            if t_first < job.submit_s - self.tol:
                self.err(f"{label}: input leaves {origin!r} at {t_first:.3f} s, before submit ({job.submit_s:.3f} s)")
        elif isinstance(src, OnboardSource):
            if origin != src.satellite:
                self.err(f"{label}: starts at {origin!r}, the job's input is on {src.satellite!r}")
        else:
            events = [t for sat, t in self.capture_events(src) if sat == origin and t >= job.submit_s - self.tol]
            if not any(t <= t_first + self.tol for t in events):
                self.err(f"{label}: {origin!r} has not imaged the target ({src.latitude_deg:g}, "
                         f"{src.longitude_deg:g}) above {src.min_elevation_deg:g} deg between submit and "
                         f"{t_first:.3f} s")
                return math.inf
            t_first = max(t_first, min(t for t in events if t <= t_first + self.tol))
        if hops:
            end_node = hops[-1].dst
            if sj.node == GROUND_NODE:
                if not end_node.startswith("gs:"):
                    self.err(f"{label}: ends at {end_node!r}, bent-pipe input must end at a ground station")
            elif end_node != sj.node:
                self.err(f"{label}: ends at {end_node!r}, not at the compute node {sj.node!r}")
            return hops[-1].end_s
        return t_first

    def check_output_route(self, sj: ScheduledJob, job: Job) -> None:
        label = f"job {sj.job_id!r}: output_route"
        hops = sj.output_route
        if sj.node == GROUND_NODE:
            if hops:
                self.err(f"{label}: bent-pipe results are already on the ground; expected no hops")
            if abs(sj.arrival_s - sj.end_s) > self.tol:
                self.err(f"job {sj.job_id!r}: arrival {sj.arrival_s:.3f} s differs from the ground run's end "
                         f"{sj.end_s:.3f} s")
            return
        if not hops:
            self.err(f"{label}: empty; the result must be downlinked from {sj.node!r}")
            return
        self.check_route(label, hops, job.output_bytes)
        if hops[0].src != sj.node:
            self.err(f"{label}: starts at {hops[0].src!r}, not at the compute node {sj.node!r}")
        if hops[0].start_s < sj.end_s - self.tol:
            self.err(f"{label}: first hop starts at {hops[0].start_s:.3f} s, before the job ends ({sj.end_s:.3f} s)")
        last = hops[-1].dst
        if job.destination is not None:
            want = f"gs:{job.destination.removeprefix('gs:')}"
            if last != want:
                self.err(f"{label}: ends at {last!r}, the job's destination is {want!r}")
        elif not last.startswith("gs:"):
            self.err(f"{label}: ends at {last!r}, not at a ground station")
        if abs(sj.arrival_s - hops[-1].end_s) > self.tol:
            self.err(f"job {sj.job_id!r}: arrival {sj.arrival_s:.3f} s differs from the last output hop's end "
                     f"{hops[-1].end_s:.3f} s")

    # -- the plan ------------------------------------------------------------------------------
    def run(self) -> list[str]:
        problem, plan = self.problem, self.plan
        seen: dict[str, str] = {}
        for sj in plan.scheduled:
            self._note(seen, sj.job_id, "scheduled")
        for u in plan.unschedulable:
            self._note(seen, u.job_id, "unschedulable")
            code = u.reason.split(":", 1)[0].strip()
            if code not in REASON_CODES:
                self.err(f"job {u.job_id!r}: reason {u.reason!r} does not start with a known code "
                         f"({', '.join(REASON_CODES)})")
        for job_id in self.jobs:
            if job_id not in seen:
                self.err(f"job {job_id!r}: missing from the plan (neither scheduled nor unschedulable)")

        fixed_ids = {f.job_id for f in problem.fixed}
        usable: list[tuple[ScheduledJob, Job]] = []
        for sj in plan.scheduled:
            job = self.jobs.get(sj.job_id)
            if job is None:
                continue
            if job.model_id not in problem.models:
                self.err(f"job {sj.job_id!r}: model {job.model_id!r} is unknown")
                continue
            if sj.node != GROUND_NODE and sj.node not in problem.profiles_by_node:
                what = "has no node profile" if sj.node in self.satellites else "is not a known node"
                self.err(f"job {sj.job_id!r}: node {sj.node!r} {what}")
                continue
            usable.append((sj, job))

        model_arrival = self._model_routes(usable)
        volume: dict[int, int] = defaultdict(int)
        for (model_id, node), routes in model_arrival.items():
            for hops in routes[1]:
                for h in hops:
                    volume[h.contact] += h.bytes
            del model_id, node
        for sj, job in usable:
            self._check_job(sj, job, model_arrival, sj.job_id in fixed_ids)
            for h in (*sj.input_route, *sj.output_route):
                volume[h.contact] += h.bytes
        for ci, total in sorted(volume.items()):
            if 0 <= ci < len(self.contacts) and total > self.capacity_bytes(ci):
                c = self.contacts[ci]
                self.err(f"contact {ci} ({c.src}->{c.dst} {c.start_s:.3f}-{c.end_s:.3f} s): {total} bytes routed, "
                         f"capacity {self.capacity_bytes(ci)} bytes")

        by_node: dict[str, list[tuple[ScheduledJob, Job]]] = defaultdict(list)
        for sj, job in usable:
            if sj.node != GROUND_NODE:
                by_node[sj.node].append((sj, job))
        for node, runs in sorted(by_node.items()):
            prof = problem.profiles_by_node[node]
            self._check_slots(node, prof, [sj for sj, _ in runs])
            self._check_memory(node, prof, {job.model_id for _, job in runs})
            self._check_energy(node, prof, [sj for sj, _ in runs])

        scheduled_by_id = {sj.job_id: sj for sj in plan.scheduled}
        for f in problem.fixed:
            got = scheduled_by_id.get(f.job_id)
            if got is None:
                self.err(f"job {f.job_id!r}: fixed placement on {f.node!r} was dropped")
            elif got.node != f.node or abs(got.start_s - f.start_s) > self.tol or abs(got.end_s - f.end_s) > self.tol:
                self.err(f"job {f.job_id!r}: fixed placement {f.node!r} {f.start_s:.3f}-{f.end_s:.3f} s changed to "
                         f"{got.node!r} {got.start_s:.3f}-{got.end_s:.3f} s")

        on_time = sum(self.jobs[sj.job_id].priority for sj in plan.scheduled if sj.job_id in self.jobs)
        if abs(plan.objective - on_time) > 1e-6 * max(1.0, on_time):
            self.err(f"plan: objective {plan.objective:g} differs from the summed priority of scheduled jobs "
                     f"({on_time:g})")
        return self.errors

    def _note(self, seen: dict[str, str], job_id: str, status: str) -> None:
        if job_id not in self.jobs:
            self.err(f"job {job_id!r}: {status} but not in the problem")
        elif job_id in seen:
            self.err(f"job {job_id!r}: appears more than once ({seen[job_id]} and {status})")
        seen.setdefault(job_id, status)

    def _model_routes(self, usable: list[tuple[ScheduledJob, Job]]
                      ) -> dict[tuple[str, str], tuple[float, list[tuple[Hop, ...]]]]:
        """(model, node) -> (earliest model arrival, distinct model routes); each route's bytes count once."""
        out: dict[tuple[str, str], tuple[float, list[tuple[Hop, ...]]]] = {}
        for sj, job in usable:
            if not sj.model_route:
                continue
            label = f"job {sj.job_id!r}: model_route"
            if sj.node == GROUND_NODE:
                self.err(f"{label}: bent-pipe runs need no model uplink")
                continue
            model = self.problem.models[job.model_id]
            ok = self.check_route(label, sj.model_route, model.size_bytes)
            if not sj.model_route[0].src.startswith("gs:"):
                self.err(f"{label}: starts at {sj.model_route[0].src!r}, not at a ground station")
                ok = False
            if sj.model_route[-1].dst != sj.node:
                self.err(f"{label}: ends at {sj.model_route[-1].dst!r}, not at the compute node {sj.node!r}")
                ok = False
            key = (job.model_id, sj.node)
            t, routes = out.get(key, (math.inf, []))
            if sj.model_route not in routes:
                routes.append(sj.model_route)
            out[key] = (min(t, sj.model_route[-1].end_s) if ok else t, routes)
        return out

    def _check_job(self, sj: ScheduledJob, job: Job,
                   model_arrival: dict[tuple[str, str], tuple[float, list[tuple[Hop, ...]]]], fixed: bool) -> None:
        name = f"job {sj.job_id!r}"
        if sj.start_s < job.submit_s - self.tol:
            self.err(f"{name}: starts at {sj.start_s:.3f} s, before its submit time {job.submit_s:.3f} s")
        if not fixed:
            if sj.start_s < self.problem.now_s - self.tol:
                self.err(f"{name}: starts at {sj.start_s:.3f} s, before now ({self.problem.now_s:.3f} s)")
            past = [h for h in (*sj.input_route, *sj.output_route) if h.start_s < self.problem.now_s - self.tol]
            if past:
                self.err(f"{name}: a hop {past[0].src}->{past[0].dst} starts at {past[0].start_s:.3f} s, before now "
                         f"({self.problem.now_s:.3f} s)")
        t_input = self.check_input_route(sj, job)
        if sj.start_s < t_input - self.tol:
            self.err(f"{name}: starts at {sj.start_s:.3f} s, before its input arrives ({t_input:.3f} s)")
        if sj.node != GROUND_NODE:
            prof = self.problem.profiles_by_node[sj.node]
            if job.model_id not in prof.resident_models:
                t_model = model_arrival.get((job.model_id, sj.node), (math.inf, []))[0]
                if t_model == math.inf:
                    self.err(f"{name}: model {job.model_id!r} is neither resident on {sj.node!r} nor uplinked to it")
                elif sj.start_s < t_model - self.tol:
                    self.err(f"{name}: starts at {sj.start_s:.3f} s, before model {job.model_id!r} reaches "
                             f"{sj.node!r} ({t_model:.3f} s)")
            want_wh = self.duration_s(job, sj.node) / 3600.0 * (prof.active_power_w - prof.idle_power_w) / prof.slots
            if abs(sj.energy_wh - want_wh) > ENERGY_TOL_WH + 1e-6 * want_wh:
                self.err(f"{name}: energy_wh {sj.energy_wh:.6g} differs from the run's {want_wh:.6g} Wh above idle")
        elif sj.model_route:
            pass  # reported by _model_routes
        want = self.duration_s(job, sj.node)
        if abs((sj.end_s - sj.start_s) - want) > self.tol:
            self.err(f"{name}: runs {sj.end_s - sj.start_s:.3f} s on {sj.node!r}, the model needs {want:.3f} s")
        self.check_output_route(sj, job)
        if sj.arrival_s > job.deadline_s + self.tol:
            self.err(f"{name}: result arrives at {sj.arrival_s:.3f} s, after the deadline {job.deadline_s:.3f} s")

    def _check_slots(self, node: str, prof: NodeProfile, runs: list[ScheduledJob]) -> None:
        # Shrink intervals by the tolerance so back-to-back runs do not count as overlapping.
        events = sorted([(sj.start_s + self.tol, 1, sj.job_id) for sj in runs] +
                        [(sj.end_s - self.tol, -1, sj.job_id) for sj in runs], key=lambda e: (e[0], e[1]))
        running = 0
        for t, delta, job_id in events:
            running += delta
            if running > prof.slots:
                self.err(f"node {node!r}: {running} jobs run at {t:.3f} s (starting {job_id!r}), "
                         f"profile {prof.name!r} has {prof.slots} slot(s)")
                return

    def _check_memory(self, node: str, prof: NodeProfile, used: Iterable[str]) -> None:
        models = set(prof.resident_models) | set(used)
        total = sum(self.problem.models[m].memory_bytes for m in models if m in self.problem.models)
        if total > prof.memory_bytes:
            self.err(f"node {node!r}: models {', '.join(sorted(models))} need {total} bytes of memory, "
                     f"profile {prof.name!r} has {prof.memory_bytes}")

    def _sunlight(self, node: str) -> list[tuple[float, float, int]]:
        sun = self.problem.contact_plan.sunlight
        if sun is None or not len(sun):
            return []
        m = sun.sat == self.problem.contact_plan.constellation.names.index(node)
        return sorted(zip(sun.start_s[m].tolist(), sun.end_s[m].tolist(), sun.state[m].astype(int).tolist(),
                          strict=True))

    def _check_energy(self, node: str, prof: NodeProfile, runs: list[ScheduledJob]) -> None:
        """Exact piecewise-linear battery simulation from now_s to the end of the window (or last run)."""
        t0 = self.problem.now_s
        t_end = max([self.problem.contact_plan.duration_s, *(sj.end_s for sj in runs)])
        sun = self._sunlight(node)
        cuts = {t0, t_end}
        for s, e, _ in sun:
            cuts.update((s, e))
        for sj in runs:
            cuts.update((sj.start_s, sj.end_s))
        times = sorted(t for t in cuts if t0 <= t <= t_end)
        cap = prof.battery_wh
        soc = prof.initial_soc * cap
        floor_wh = prof.min_soc * cap
        per_job_w = (prof.active_power_w - prof.idle_power_w) / prof.slots
        for a, b in itertools.pairwise(times):
            mid = 0.5 * (a + b)
            state = SUNLIGHT_SUNLIT
            for s, e, st in sun:
                if s <= mid < e:
                    state = st
                    break
            gain_w = {SUNLIGHT_SUNLIT: prof.solar_w, SUNLIGHT_PENUMBRA: 0.5 * prof.solar_w}.get(state, 0.0)
            n_running = sum(1 for sj in runs if sj.start_s <= mid < sj.end_s)
            power_w = gain_w - prof.idle_power_w - n_running * per_job_w
            soc = min(cap, soc + power_w * (b - a) / 3600.0)
            if soc < floor_wh - ENERGY_TOL_WH:
                self.err(f"node {node!r}: battery at {soc:.4f} Wh at {b:.3f} s, below the minimum "
                         f"{floor_wh:.4f} Wh ({prof.min_soc:.0%} of {cap:g} Wh)")
                return




def validate_plan(problem: Problem, plan: Plan, *, tolerance_s: float = TIME_TOL_S) -> list[str]:
    """Every rule ``plan`` breaks, one line each; an empty list means the plan is valid.

    Parameters
    ----------
    tolerance_s : slack on time comparisons (seconds; default 1 ms).
    """
    return _Checker(problem, plan, tolerance_s).run()
