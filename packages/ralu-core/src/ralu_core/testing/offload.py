"""What an adapter guarantees for an offloaded pipeline (`OffloadConformance`): with diffusers' model CPU offload
or group offloading, every recipe gives the images it gives without offloading, the baseline equals the plain
offloaded pipeline, and the offload hooks (by kind) and every module's place are left as the user set them.

On a machine without an accelerator the offload moves weights from the CPU to the CPU, but its hooks are the
real ones (accelerate's for model offload, diffusers' for group offloading), and those hooks are what a recipe
could break. Sequential CPU offload fails on this CPU build even in the plain pipeline (accelerate moves
parameters to the meta device with an argument this torch's Parameter rejects), so it is run on a GPU only
(``benchmarks/gpu.sh``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ralu_core.testing.conformance import RecipesOnAPipeline, assert_same_snapshot, pipeline_snapshot


def model_offload(pipe: Any) -> None:
    pipe.enable_model_cpu_offload(device="cuda" if torch.cuda.is_available() else "cpu")


def group_offload(pipe: Any) -> None:
    onload = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe.transformer.enable_group_offload(
        onload_device=onload, offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
    )


OFFLOADS: dict[str, Callable[[Any], None]] = {"model CPU offload": model_offload, "group offloading": group_offload}


class OffloadConformance(RecipesOnAPipeline):
    """pytest mixin: the adapter's baseline, a RALU and a RAS recipe on an offloaded pipeline. Subclass as
    ``Test...``, set the class attributes and implement `make_pipeline`."""

    def test_an_offloaded_pipeline_gives_the_same_images_and_keeps_its_offload(self) -> None:
        plain = self.fresh()
        expected = {recipe: self.run(plain, recipe) for recipe in (self.baseline, *self.recipes)}
        for name, offload in OFFLOADS.items():
            pipe = self.fresh()
            offload(pipe)
            plain_latents = self.run(pipe, None)  # what the pipeline's own call leaves (lazy state) comes first
            before, hooks = offload_snapshot(pipe)
            places = {n: str(p.device) for n, p in pipe.transformer.named_parameters()}
            assert torch.equal(self.run(pipe, self.baseline), plain_latents), name
            for recipe, latents in expected.items():
                assert torch.equal(self.run(pipe, recipe), latents), f"{recipe} under {name}"
            after, hooks_after = offload_snapshot(pipe)
            assert_same_snapshot(before, after, name)
            assert hooks == hooks_after, name
            assert places == {n: str(p.device) for n, p in pipe.transformer.named_parameters()}, name


def offload_snapshot(pipe: Any) -> tuple[dict[str, Any], list[str]]:
    """`pipeline_snapshot`, with the model offload hooks compared by kind and place: the pipeline's own call
    replaces them at its end (``maybe_free_model_hooks`` enables the offload again), so their identity changes
    with every call, plain or accelerated."""
    state = pipeline_snapshot(pipe)
    hooks = [type(hook).__name__ for hook in state["pipeline"].pop("_all_hooks", [])]
    for key, value in state.items():
        if key.endswith(":attributes") and "_hf_hook" in value:
            hooks.append(f"{key.removesuffix(':attributes')}: {type(value.pop('_hf_hook')).__name__}")
            for wrapped in ("forward", "_old_forward"):  # accelerate's wrapper around the hooked forward
                value.pop(wrapped, None)
    return state, sorted(hooks)
