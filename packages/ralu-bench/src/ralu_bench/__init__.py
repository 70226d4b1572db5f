"""ralu-bench: reference models and quality measurement for ralu."""
