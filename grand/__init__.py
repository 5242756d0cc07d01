"""grand: build GranD-style densely grounded image datasets on Ray."""

__version__ = "0.1.0"
