"""ralu-lumina: the Lumina-Next adapter (diffusers' LuminaPipeline) and its recipes."""
