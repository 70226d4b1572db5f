"""The sampling core: token states, the engine that runs a recipe's stages, schedules' maths, and the
contract a model adapter fulfils for it (`contract`). Nothing here knows diffusers."""
