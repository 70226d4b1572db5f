"""FLUX's variant pipelines are refused by name, with what they add and what to use instead, before any work;
the FluxPipeline made from their components (`from_pipe`) is accelerated."""

from __future__ import annotations

import diffusers
import pytest
import torch

import ralu_core
from ralu_core.errors import UnsupportedPipelineError
from ralu_flux.testing import make_flux_pipeline

VARIANTS = ["FluxInpaintPipeline", "FluxKontextPipeline", "FluxFillPipeline"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_is_refused_saying_why_and_its_plain_pipeline_runs(variant: str) -> None:
    pipe = make_flux_pipeline("tiny", seed=0)
    other = getattr(diffusers, variant).from_pipe(pipe)
    with pytest.raises(
        UnsupportedPipelineError,
        match=rf"{variant} is a variant of FluxPipeline that ralu's 'flux' adapter does not drive yet: "
        rf".+: FluxPipeline\.from_pipe\(pipe\) shares",
    ):
        ralu_core.accelerate(other, "ralu-flux-7x")
    plain = diffusers.FluxPipeline.from_pipe(other)
    plain.set_progress_bar_config(disable=True)
    out = ralu_core.accelerate(plain, "ralu-flux-7x")(
        "a",
        generator=torch.Generator().manual_seed(0),
        height=64,
        width=64,
        max_sequence_length=16,
        output_type="latent",
    )
    assert torch.isfinite(out.images).all()
