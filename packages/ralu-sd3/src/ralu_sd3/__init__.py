"""ralu-sd3: the Stable Diffusion 3 / 3.5 adapter for ralu."""
