"""ralu adapter for FLUX.2 (diffusers Flux2Pipeline)."""
