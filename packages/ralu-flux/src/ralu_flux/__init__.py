"""ralu-flux."""
