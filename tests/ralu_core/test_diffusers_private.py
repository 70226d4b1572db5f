"""Each private detail of diffusers that ralu reads (`ralu_core.pipelines.diffusers_private`) still holds in the
installed diffusers, one test per detail, so that a release which moves one fails here by name; and the
installed diffusers is one the packages declare."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from packaging.specifiers import SpecifierSet

from ralu_core.pipelines import diffusers_private as private

ROOT = Path(__file__).resolve().parents[2]


class Doubling(private.ModelHook):  # type: ignore[misc]
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return 2 * private.original_forward(self)(*args, **kwargs)


def test_the_installed_diffusers_is_supported_and_every_package_declares_the_range() -> None:
    assert diffusers.__version__ in SpecifierSet(private.SUPPORTED_DIFFUSERS)
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        declared = re.findall(r'"(diffusers[^"]*)"', pyproject.read_text(encoding="utf-8"))
        assert declared in ([], [f"diffusers{private.SUPPORTED_DIFFUSERS}"]), pyproject


def test_hook_types_come_from_diffusers_hooks_module() -> None:
    from diffusers.hooks import hooks

    for name in private.HOOK_TYPES:
        assert getattr(private, name) is getattr(hooks, name)
    with pytest.raises(AttributeError, match="no attribute 'Elsewhere'"):
        private.Elsewhere  # noqa: B018


def test_a_modules_hook_registry_its_order_and_the_wrapped_forward() -> None:
    layer = torch.nn.Linear(2, 2)
    assert private.hook_registry(layer) is None  # reading never creates one
    registry = private.HookRegistry.check_if_exists_or_initialize(layer)
    registry.register_hook(Doubling(), "inner")
    registry.register_hook(Doubling(), "outer")
    assert private.hook_registry(layer) is registry
    assert private.hook_names(registry) == ("inner", "outer")
    x = torch.ones(1, 2)
    torch.testing.assert_close(layer(x), 4 * torch.nn.functional.linear(x, layer.weight, layer.bias))
    private.refresh_child_registries(registry)
    registry.remove_hook("outer", recurse=False)
    registry.remove_hook("inner", recurse=False)
    assert "forward" in vars(layer)  # diffusers leaves the class's own forward on the instance ...
    private.drop_hook_registry(layer)
    assert private.hook_registry(layer) is None
    assert "forward" not in vars(layer)  # ... which dropping the registry removes: the module is as it was
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_a_named_cache_context_reaches_a_stateful_hook_on_a_model_without_the_mixin() -> None:
    seen: list[Any] = []

    class State(private.BaseState):  # type: ignore[misc]
        def reset(self) -> None:
            pass

    class Recording(private.ModelHook):  # type: ignore[misc]
        _is_stateful = True

        def __init__(self) -> None:
            super().__init__()
            self.states = private.StateManager(State)

        def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            seen.append(self.states._context)
            return private.original_forward(self)(*args, **kwargs)

    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    private.HookRegistry.check_if_exists_or_initialize(model[0]).register_hook(Recording(), "recording")
    with private.named_cache_context(model, "cond", step_index=3, num_inference_steps=5, sigma=0.5, timestep=None):
        model(torch.ones(1, 1))
    assert seen[0].name == "cond" and seen[0].step_index == 3 and seen[0].num_inference_steps == 5


@pytest.mark.parametrize(
    ("module", "block", "text_index"),
    [
        ("transformer_flux", "FluxTransformerBlock", 0),
        ("transformer_flux", "FluxSingleTransformerBlock", 0),
        ("attention", "JointTransformerBlock", 0),
    ],
)
def test_blocks_are_described_with_their_arguments_and_output_indices(
    module: str, block: str, text_index: int | None
) -> None:
    import importlib

    package = "diffusers.models" if module == "attention" else "diffusers.models.transformers"
    cls = getattr(importlib.import_module(f"{package}.{module}"), block)
    description = private.block_outputs(cls)
    image_index, text = private.output_indices(description)
    assert isinstance(image_index, int) and text == text_index
    hidden = torch.zeros(1)
    assert private.block_argument(description, "hidden_states", (hidden,), {}) is hidden
    assert private.block_argument(description, "hidden_states", (), {"hidden_states": hidden}) is hidden
    with pytest.raises(ValueError):
        private.block_outputs(torch.nn.Linear)


def test_a_block_class_diffusers_does_not_describe_can_be_described() -> None:
    class Block(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
            return hidden_states + temb

    with pytest.raises(ValueError):
        private.block_outputs(Block)
    private.describe_block(Block, image_index=0, text_index=None)
    description = private.block_outputs(Block)
    assert private.output_indices(description) == (0, None)
    hidden = torch.zeros(1)
    assert private.block_argument(description, "hidden_states", (hidden, hidden + 1), {}) is hidden
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    before = private.block_outputs(FluxTransformerBlock)
    private.describe_block(FluxTransformerBlock, image_index=0, text_index=None)  # described: left alone
    assert private.block_outputs(FluxTransformerBlock) is before and private.output_indices(before)[1] is not None


def test_the_repeated_block_classes_of_a_model() -> None:
    from diffusers import FluxTransformer2DModel

    assert private.repeated_block_names(FluxTransformer2DModel) == {
        "FluxTransformerBlock",
        "FluxSingleTransformerBlock",
    }
    assert private.repeated_block_names(torch.nn.Linear(1, 1)) == set()


def test_a_pipelines_execution_device() -> None:
    from types import SimpleNamespace

    from diffusers import DiffusionPipeline

    assert isinstance(vars(DiffusionPipeline)["_execution_device"], property)
    assert private.execution_device(SimpleNamespace(_execution_device=torch.device("meta"))) == torch.device("meta")


def test_an_attention_processors_dispatch_options() -> None:
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    processor = FluxAttnProcessor()
    for attribute in ("_attention_backend", "_parallel_config"):
        assert hasattr(processor, attribute), attribute
    processor._attention_backend = "native"
    assert private.attention_dispatch_options(processor) == {"backend": "native", "parallel_config": None}
