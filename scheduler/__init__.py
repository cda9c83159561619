"""Placement of inference jobs on satellites over the contact plan (CP-SAT, greedy, bent-pipe)."""
