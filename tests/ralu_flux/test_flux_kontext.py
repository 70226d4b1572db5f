"""FluxKontextPipeline under the FLUX adapter's recipes: `ralu_core.testing.reference`, and what Kontext adds (the
reference at the generated tokens' level, RAS with the reference computed beside the text, the size fitted to
`max_area`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import pytest
import torch

from ralu_core.errors import CallError
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import cached_attention_outputs, dense_at
from ralu_core.testing.reference import ReferenceImageConformance
from ralu_flux.adapter import FluxAdapter
from ralu_flux.testing import make_flux_pipeline

HEIGHT, WIDTH = 64, 96


def kontext() -> Any:
    pipe = diffusers.FluxKontextPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TestFluxKontext(ReferenceImageConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    height, width = HEIGHT, WIDTH
    # The size as asked (Kontext fits it to max_area), the reference at its own size (no preferred resolution).
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16, "max_area": HEIGHT * WIDTH, "_auto_resize": False}

    def make_pipeline(self) -> Any:
        return kontext()


def seen_by_the_transformer(pipe: Any, recipe: str, **extra: Any) -> list[tuple[int, torch.Tensor]]:
    """(image tokens, RoPE ids) of each transformer evaluation of one Kontext call."""
    seen: list[tuple[int, torch.Tensor]] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[1], kwargs["img_ids"])),
        with_kwargs=True,
    )
    try:
        accelerate(pipe, recipe)(
            prompt="a cat",
            image=torch.rand(1, 3, 64, 64),
            height=HEIGHT,
            width=WIDTH,
            **TestFluxKontext.call,
            output_type="latent",
            **extra,
        )
    finally:
        hook.remove()
    return seen


def test_the_reference_rides_at_the_generated_tokens_level() -> None:
    seen = seen_by_the_transformer(kontext(), "ralu-flux-7x")
    full, reference = (HEIGHT // 16) * (WIDTH // 16), (64 // 16) ** 2  # tokens of 16 x 16 pixels
    first_count, first_ids = seen[0]
    assert first_count == full // 4 + reference // 4  # both at half resolution in the first stage
    riders = first_ids[first_ids[:, 0] == 1]
    assert riders.shape[0] == reference // 4 and float(riders[:, 1:].max()) == 64 // 32 - 1  # one half-res grid
    last_count, last_ids = seen[-1]
    assert last_count == full + reference and int((last_ids[:, 0] == 1).sum()) == reference


def test_ras_computes_the_reference_with_the_text_and_agrees_with_the_dense_step() -> None:
    pipe = kontext()
    kwargs = {
        "prompt": ["a red circle", "a blue square"],
        "generator": [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
        "image": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)),
        "height": HEIGHT,
        "width": WIDTH,
        **TestFluxKontext.call,
    }
    out = cached_attention_outputs(FluxAdapter(), pipe, kwargs)
    # The store reads the generated tokens as the sequence's last ones, so the reference goes first there: the
    # same attention in another order (equal to rounding).
    torch.testing.assert_close(out.recorded, out.plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)
    assert (out.dropped - dense_at(out)).abs().max() > 1e-3


def test_the_size_is_fitted_to_max_area_as_the_pipeline_fits_it_then_checked() -> None:
    pipe = kontext()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    call = {"prompt": "a cat", "image": image, "height": HEIGHT, "width": WIDTH, "max_area": 48 * 80}
    call |= {"num_inference_steps": 2, "max_sequence_length": 16, "_auto_resize": False, "output_type": "latent"}
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    ours = accelerate(pipe, "flux-baseline")(**call, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(ours, plain)
    assert ours.shape == plain.shape == (1, (48 // 16) * (64 // 16), 64)  # 64 x 96 fitted to 48 x 64
    with pytest.raises(CallError, match=r"multiple of 32 .*after Kontext fits the size to max_area=3840"):
        accelerate(pipe, "ralu-flux-7x")(prompt="a cat", height=HEIGHT, width=WIDTH, max_area=48 * 80)
