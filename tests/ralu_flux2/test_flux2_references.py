"""FLUX.2's reference images (multi-reference editing): their tokens ride along with the generated ones at T = 10,
20, ..., at full resolution at every stage; the baseline is the pipeline's; every recipe runs with them, a batch
equals single calls, and the references matter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import ralu_core
from ralu_flux2.testing import make_flux2_pipeline

CALL = {"max_sequence_length": 64, "output_type": "latent"}
PROMPTS = ["a red circle", "a blue square on the grass"]


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipeline = make_flux2_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize(
    ("images", "size"),
    [
        ([picture(64, 80, 1)], {}),  # the output takes the reference's size
        ([picture(64, 96, 1), picture(80, 64, 2)], {"height": 64, "width": 96}),  # two references, T = 10 and 20
    ],
)
def test_the_baseline_is_the_pipeline_with_its_references(pipe, images: list[Any], size: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**CALL, **size, "num_inference_steps": 4}
    plain = pipe(image=images, prompt=PROMPTS, generator=generators(0, 1), **kwargs).images
    fast = ralu_core.accelerate(pipe, "flux2-baseline")
    ours = fast(image=images, prompt=PROMPTS, generator=generators(0, 1), **kwargs).images
    assert torch.equal(ours, plain)


@pytest.mark.parametrize("recipe", ["ralu-flux2-4x", "ras-flux2"])
def test_recipes_run_with_references_and_a_batch_equals_single_calls(pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    references = [picture(64, 96, 1), picture(80, 64, 2)]
    kwargs = {**CALL, "height": 64, "width": 96}
    fast = ralu_core.accelerate(pipe, recipe)
    batch = fast(image=references, prompt=PROMPTS, generator=generators(3, 4), **kwargs).images
    singles = torch.cat(
        [
            fast(image=references, prompt=p, generator=generators(s), **kwargs).images
            for p, s in zip(PROMPTS, (3, 4), strict=True)
        ]
    )
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    other = fast(image=[picture(64, 96, 9)], prompt=PROMPTS[0], generator=generators(3), **kwargs).images
    assert (other - batch[:1]).abs().max() > 1e-3, "the references changed nothing"


def test_ras_keeps_exact_keys_and_values_beside_the_references(pipe) -> None:  # type: ignore[no-untyped-def]
    """The store reads the generated tokens as the sequence's last ones, so the references go first under RAS (the
    same attention in another order, equal to rounding): a sparse step equals the dense one at the tokens it
    computes, and dropping the cached tokens changes it."""
    from ralu_core.testing.conformance import cached_attention_outputs, dense_at
    from ralu_flux2.adapter import Flux2Adapter

    kwargs = {"prompt": PROMPTS, "image": [picture(64, 96, 1), picture(80, 64, 2)], "height": 64, "width": 96}
    out = cached_attention_outputs(Flux2Adapter(), pipe, {**kwargs, "max_sequence_length": 64})
    torch.testing.assert_close(out.recorded, out.plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)
    assert (out.dropped - dense_at(out)).abs().max() > 1e-3


def test_references_that_are_not_pil_images_are_refused_before_encoding(pipe) -> None:  # type: ignore[no-untyped-def]
    from ralu_core.errors import CallError

    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with pytest.raises(CallError, match="reference images are PIL images"):
            ralu_core.accelerate(pipe, "flux2-baseline")(image=torch.rand(1, 3, 64, 64), prompt="a", **CALL)
    finally:
        hook.remove()
    assert encoded == []
