"""Orbit propagation and the contact plan: ground passes, inter-satellite links, sunlight."""
