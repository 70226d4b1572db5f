"""ralu-caching is found through its entry point, like any third-party plugin."""

from __future__ import annotations

from ralu_core.plugins import Registry, create_plugin_manager


def test_caches_and_recipes_are_registered_through_the_entry_point() -> None:
    registry = Registry.collect(create_plugin_manager())
    for name in ("taylorseer", "velocity-forecast", "first-block", "deepcache", "diffusers"):
        assert registry.strategies["feature_cache"][name].plugin == "caching"
    for name in (
        "ralu-flux-5x-taylorseer",
        "ralu-flux-5x-taylorseer-fast",
        "ralu-flux-5x-delta-dit",
        "ralu-flux-5x-toca",
        "sd-deepcache",
    ):
        assert registry.recipes[name].plugin == "caching"
