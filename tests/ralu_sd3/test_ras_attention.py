"""RAS on SD3 and SD3.5: sparse steps attend to every token, the skipped ones through cached keys and values
(after SD3.5's q/k RMSNorm; SD3.5's second, image-only attention keeps its own)."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_core.errors import UnsupportedPipelineError
from ralu_core.recipes import load_recipe_text
from ralu_core.testing.conformance import cached_attention_outputs, dense_at
from ralu_sd3.adapter import SD3Adapter

CALL = {"max_sequence_length": 8, "output_type": "latent", "height": 64, "width": 96}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ras(extra: str = "ratio: 0.5, dense_warmup: 2", inactive: str = "") -> ralu_core.Recipe:
    return load_recipe_text(
        "name: ras-test\nmodel: sd3\nschedule: uniform\nstages:\n"
        f"  - {{level: 0, steps: 6, step_tokens: {{name: ras-focus, {extra}}}{inactive}}}\n"
    )


@pytest.mark.parametrize("variant", ["sd3", "sd35"])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_cached_attention_agrees_with_the_dense_forward(request, variant: str, guidance: float) -> None:  # type: ignore[no-untyped-def]
    pipe = request.getfixturevalue(variant)
    kwargs = {**CALL, "prompt": ["a red circle", "a blue square"], "generator": [gen(1), gen(2)]}
    out = cached_attention_outputs(SD3Adapter(), pipe, {**kwargs, "guidance_scale": guidance})
    assert torch.equal(out.recorded, out.plain)  # the stand-in computes what JointAttnProcessor2_0 does
    assert torch.equal(out.everything, out.plain)  # every token through the sparse path: exactly dense
    assert not torch.equal(out.active[0], out.active[1])  # one token set per image, in one batch
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)
    assert (out.dropped - dense_at(out)).abs().max() > 1e-3
    config = pipe.transformer.config
    layers = config.num_layers + len(config.dual_attention_layers)  # SD3.5's second attention is a layer too
    slots = 2 * (2 if guidance > 1 else 1)  # images x CFG branches
    width = config.num_attention_heads * config.attention_head_dim
    tokens = (64 // 8 // config.patch_size) * (96 // 8 // config.patch_size)
    assert out.cache_bytes == layers * 2 * slots * tokens * width * 4


def test_ras_run_on_sd35_batch_equals_singles_and_leaves_the_processors(sd35) -> None:  # type: ignore[no-untyped-def]
    processors = dict(sd35.transformer.attn_processors)
    accelerated = ralu_core.accelerate(sd35, ras())
    batch = accelerated(["a red circle", "a blue square"], generator=[gen(1), gen(2)], **CALL).images
    assert dict(sd35.transformer.attn_processors) == processors
    for row, (prompt, seed) in enumerate([("a red circle", 1), ("a blue square", 2)]):
        single = accelerated(prompt, generator=gen(seed), **CALL).images
        torch.testing.assert_close(batch[row : row + 1], single, rtol=1e-4, atol=1e-4)


def test_a_fused_processor_is_refused_before_the_text_encoders(sd3) -> None:  # type: ignore[no-untyped-def]
    encoded = []
    hook = sd3.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    sd3.transformer.fuse_qkv_projections()
    try:
        with pytest.raises(UnsupportedPipelineError, match=r"uses FusedJointAttnProcessor2_0.*`inactive: drop`"):
            ralu_core.accelerate(sd3, ras())("a cat", generator=gen(0), **CALL)
    finally:
        sd3.transformer.unfuse_qkv_projections()
        hook.remove()
    assert not encoded
