"""Ray wiring: the steps (stages.py) and the streaming pipeline that runs them (pipeline.py)."""
