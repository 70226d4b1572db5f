"""Measurement: exact FLOPs on the meta device, recipe accounting, `ralu bench` and its paired statistics,
host-device synchronisations, full-size random-weight models for timing."""
