"""Scenario replay: play a scenario end to end in simulated time and report what happened.

``load_replay`` reads a scenario's replay sections (workload, faults, policy,
solver, agents, replay); :func:`skyinfer.replay.engine.run_replay` plays it;
:mod:`skyinfer.replay.report`, :mod:`~skyinfer.replay.html` and
:mod:`~skyinfer.replay.czml` write the outputs.
"""
