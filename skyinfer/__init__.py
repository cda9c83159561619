"""skyinfer: schedule and run machine-learning inference on satellites in orbit."""

__version__ = "0.1.0"
