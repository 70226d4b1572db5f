"""The diffusers base: the adapter capabilities, what every diffusers DiT adapter shares (`dit`), the
parts of a prepared call, RAS's key/value store, diffusers' private details (one module), `accelerate()`."""
