"""Contact-plan exports: JSON schema, CSV, and NASA ION ``ionrc`` syntax."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

import numpy as np
from sgp4.api import Satrec

from orbit.contact_plan import ContactPlan, GroundContacts, IslContacts, SunlightIntervals
from orbit.export import contact_plan_to_csv, contact_plan_to_ion, contact_plan_to_json
from orbit.types import Constellation, GroundStation, Satellite

L1 = "1 39418U 13066C   23109.79787126  .00005229  00000+0  40308-3 0  9998"
L2 = "2 39418  97.5420 177.4221 0030201 307.3189  52.5284 15.01682353514599"
EPOCH = datetime(2023, 4, 20, tzinfo=UTC)


def _plan() -> ContactPlan:
    sr = Satrec.twoline2rv(L1, L2)
    sats = (Satellite("SAT A", 39418, sr), Satellite("SAT B", 39419, sr))
    stations = (GroundStation("Svalbard", 78.23, 15.41, 500.0, 5.0),)
    ground = GroundContacts(
        sat=np.array([0, 1]), station=np.array([0, 0]), aos_s=np.array([0.0, 3600.25]),
        los_s=np.array([300.5, 4200.75]), tca_s=np.array([0.0, 3900.0]),
        max_elevation_deg=np.array([12.3456, 45.0]), truncated=np.array([True, False]),
    )
    isl = IslContacts(a=np.array([0]), b=np.array([1]), start_s=np.array([10.4]), end_s=np.array([20.6]),
                      min_range_km=np.array([1000.0]), max_range_km=np.array([1200.0]))
    sun = SunlightIntervals(sat=np.array([0, 0]), start_s=np.array([0.0, 100.0]), end_s=np.array([100.0, 86400.0]),
                            state=np.array([0, 2], dtype=np.int8))
    return ContactPlan(EPOCH, 86400.0, Constellation(sats), stations, ground, isl, sun, "los")


def test_json_has_the_documented_fields_and_utc_millisecond_times() -> None:
    data = contact_plan_to_json(_plan())
    assert data["start"] == "2023-04-20T00:00:00.000Z"
    assert data["end"] == "2023-04-21T00:00:00.000Z"
    g0 = data["ground_contacts"][0]
    assert set(g0) == {"satellite", "norad_id", "station", "aos", "los", "tca", "max_elevation_deg", "truncated"}
    assert g0["aos"] == "2023-04-20T00:00:00.000Z" and g0["truncated"] is True
    assert data["ground_contacts"][1]["los"] == "2023-04-20T01:10:00.750Z"
    assert data["isl_contacts"][0] == {"a": "SAT A", "b": "SAT B", "start": "2023-04-20T00:00:10.400Z",
                                       "end": "2023-04-20T00:00:20.600Z", "min_range_km": 1000.0,
                                       "max_range_km": 1200.0}
    assert [s["state"] for s in data["sunlight"]] == ["umbra", "sunlit"]


def test_csv_rows_by_kind() -> None:
    rows = list(csv.DictReader(io.StringIO(contact_plan_to_csv(_plan()))))
    assert [r["kind"] for r in rows] == ["ground", "ground", "isl", "sunlight", "sunlight"]
    assert rows[0]["truncated"] == "true"


def test_ion_contacts_both_directions_bytes_per_second_and_name_map() -> None:
    text = contact_plan_to_ion(_plan(), ground_rate_bps=160e6, isl_rate_bps=8e9)
    assert "#   1 = SAT A" in text and "#   3 = gs:Svalbard" in text
    contacts = [ln.split() for ln in text.splitlines() if ln.startswith("a contact")]
    ranges = [ln.split() for ln in text.splitlines() if ln.startswith("a range")]
    time_re = re.compile(r"^\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d$")
    for c in contacts:
        assert time_re.match(c[2]) and time_re.match(c[3])
    # ground passes: sat 1 <-> station 3 and sat 2 <-> station 3, both directions, 20 MB/s
    assert ["a", "contact", "2023/04/20-00:00:00", "2023/04/20-00:05:00", "1", "3", "20000000"] in contacts
    assert ["a", "contact", "2023/04/20-00:00:00", "2023/04/20-00:05:00", "3", "1", "20000000"] in contacts
    # times rounded inward to whole seconds: 3600.25..4200.75 -> 01:00:01..01:10:00
    assert ["a", "contact", "2023/04/20-01:00:01", "2023/04/20-01:10:00", "2", "3", "20000000"] in contacts
    # ISL 10.4..20.6 s -> 00:00:11..00:00:20 at 1 GB/s, light time 1 s
    assert ["a", "contact", "2023/04/20-00:00:11", "2023/04/20-00:00:20", "2", "1", "1000000000"] in contacts
    assert ["a", "range", "2023/04/20-00:00:11", "2023/04/20-00:00:20", "1", "2", "1"] in ranges
    assert len(contacts) == 6 and len(ranges) == 3


def test_graph_at_holds_only_links_alive_at_that_instant() -> None:
    plan = _plan()
    g = plan.graph_at(15.0)
    assert g.has_edge("SAT A", "SAT B") and g["SAT A"]["SAT B"]["kind"] == "isl"
    assert g.has_edge("SAT A", "gs:Svalbard") and not g.has_edge("SAT B", "gs:Svalbard")
    g = plan.graph_at(3700.0)
    assert g.has_edge("SAT B", "gs:Svalbard") and not g.has_edge("SAT A", "SAT B")
    assert set(g.nodes) == {"SAT A", "SAT B", "gs:Svalbard"}


def test_contacts_are_one_way_both_directions_and_stable() -> None:
    plan = _plan()
    first = plan.contacts()
    assert len(first) == 6  # 2 passes and 1 ISL, each both ways
    assert {(c.src, c.dst) for c in first if c.kind == "isl"} == {("SAT A", "SAT B"), ("SAT B", "SAT A")}
    assert [c.start_s for c in first] == sorted(c.start_s for c in first)
    first.clear()  # callers get their own list: the plan's cached one is untouched
    assert plan.contacts() == plan.contacts() and len(plan.contacts()) == 6


def test_time_expanded_graph_routes_only_forward_in_time() -> None:
    import networkx as nx

    g = _plan().time_expanded_graph()
    # Svalbard -> SAT B is possible (uplink at 3600.25 s, after waiting); SAT B -> SAT A only during the ISL at 10.4 s.
    assert nx.has_path(g, ("gs:Svalbard", 0.0), ("SAT B", 3600.25))
    assert nx.has_path(g, ("SAT B", 0.0), ("SAT A", 10.4))
    assert not nx.has_path(g, ("SAT B", 3600.25), ("SAT A", 86400.0))
    for u, v, data in g.edges(data=True):
        assert v[1] >= u[1], (u, v, data)
