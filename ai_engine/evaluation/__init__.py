"""Evaluation of detectors: metrics (numpy only, ``metrics``) and plots (matplotlib Agg, ``plots``)."""
