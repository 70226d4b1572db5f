from __future__ import annotations

import pytest

from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.testing import ToyPipeline, ToyPlugin


@pytest.fixture
def toy_plugin() -> ToyPlugin:
    return ToyPlugin()


@pytest.fixture
def toy_pm(toy_plugin: ToyPlugin):  # type: ignore[no-untyped-def]
    return create_plugin_manager(plugins=[toy_plugin])


@pytest.fixture
def registry(toy_pm) -> Registry:  # type: ignore[no-untyped-def]
    return Registry.collect(toy_pm)


@pytest.fixture
def toy_pipe() -> ToyPipeline:
    return ToyPipeline()
