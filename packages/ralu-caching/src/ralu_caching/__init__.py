"""ralu-caching: reuse work across denoising steps, alone or inside RALU's stages."""
