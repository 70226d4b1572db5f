"""SD3's variant pipelines are refused by name, with what they add and what to use instead, before any work;
the StableDiffusion3Pipeline made from their components (`from_pipe`) is accelerated."""

from __future__ import annotations

import diffusers
import pytest
import torch

import ralu_core
from ralu_core.errors import UnsupportedPipelineError
from ralu_sd3.testing import make_sd3_pipeline

VARIANTS = ["StableDiffusion3InpaintPipeline"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_is_refused_saying_why_and_its_plain_pipeline_runs(variant: str) -> None:
    pipe = make_sd3_pipeline("sd3-tiny", seed=0)
    other = getattr(diffusers, variant).from_pipe(pipe)
    with pytest.raises(
        UnsupportedPipelineError,
        match=rf"{variant} is a variant of StableDiffusion3Pipeline that ralu's 'sd3' adapter does not drive yet: "
        rf".+: StableDiffusion3Pipeline\.from_pipe\(pipe\) shares",
    ):
        ralu_core.accelerate(other, "ralu-sd3-3x")
    plain = diffusers.StableDiffusion3Pipeline.from_pipe(other)
    plain.set_progress_bar_config(disable=True)
    out = ralu_core.accelerate(plain, "ralu-sd3-3x")(
        "a",
        generator=torch.Generator().manual_seed(0),
        height=64,
        width=64,
        max_sequence_length=8,
        output_type="latent",
    )
    assert torch.isfinite(out.images).all()
