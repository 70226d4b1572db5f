"""`toca` as published: the attention map scores the tokens, a ToCa step reuses the attention and recomputes
only the fresh tokens of the token-wise modules, the official per-layer ratio and step schedule, batch =
singles, exact FLOPs of the paper's row, and refusals before any work."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import ralu_core
from ralu_caching import attention_received as received_module
from ralu_caching.attention_received import AttentionReceived, attention_received
from ralu_caching.toca import ToCaCache, ToCaConfig, fresh_ratio
from ralu_caching.toca_hooks import _stream_part
from ralu_core import RecipeError
from ralu_core.errors import ConfigFieldError
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.pipelines.adapter import bind_to_adapter
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.testing import seeded_generators

from .helpers import with_cache

CALL = {"height": 128, "width": 128, "output_type": "latent", "num_inference_steps": 8}
TOCA = "{name: toca, interval: 3, warmup: 3, cache_ratio: 0.5, schedule: constant}"


def _explicit_map(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    logits = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1).mean(dim=(1, 2))


def test_the_score_is_the_attention_each_key_receives(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    expected = _explicit_map(query, key)
    score, output = attention_received(query, key, value=value)
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value))
    monkeypatch.setattr(received_module, "MAP_BYTES", 1)  # one head at a time: the same numbers
    score, output = attention_received(query, key, value=value)
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value))
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    mask[..., 0] = True
    score, output = attention_received(query, key, mask, value=value)
    torch.testing.assert_close(score, _explicit_map(query, key, mask))
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value, attn_mask=mask))
    # Taken over inside SDPA, called positionally or by keyword: the attention's output is SDPA's.
    calls = (
        lambda: F.scaled_dot_product_attention(query, key, value),
        lambda: F.scaled_dot_product_attention(query=query, key=key, value=value),
    )
    for call in calls:
        seen = AttentionReceived()
        with seen:
            out = call()
        torch.testing.assert_close(seen.score, expected)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(query, key, value))


def test_padded_queries_are_left_out_of_the_score() -> None:
    """A joint sequence whose key mask drops padded text (Qwen-Image's): the padding's own queries do not count, so
    an image padded in a batch scores its keys as it does alone."""
    g = torch.Generator().manual_seed(1)
    query, key = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(2))
    alone, _ = attention_received(query, key)
    padded_query, padded_key = (
        torch.cat([t[:, :, :1], torch.randn(1, 2, 2, 8, generator=g), t[:, :, 1:]], 2) for t in (query, key)
    )
    mask = torch.tensor([True, False, False, True, True, True, True])[None, None, None, :]
    score, _ = attention_received(padded_query, padded_key, mask)
    kept = [0, 3, 4, 5, 6]
    torch.testing.assert_close(score[:, kept], alone)
    assert torch.equal(score[:, 1:3], torch.zeros(1, 2))


def test_each_stream_is_scored_by_its_part_of_the_joint_sequence() -> None:
    received = torch.arange(10.0)[None]  # 4 text + 6 image tokens, or 6 image + 4 text
    assert _stream_part(received, 6, "image", text_first=True).tolist() == [[4, 5, 6, 7, 8, 9]]
    assert _stream_part(received, 4, "text", text_first=True).tolist() == [[0, 1, 2, 3]]
    assert _stream_part(received, 6, "image", text_first=False).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert _stream_part(received, 4, "text", text_first=False).tolist() == [[6, 7, 8, 9]]
    assert _stream_part(received, 10, "joint", text_first=True).tolist() == [list(range(10))]


def test_the_published_ratio_schedule() -> None:
    """The official FLUX code: 0.1 x (1.5 - layer / 27) x 0.4 in double-stream, x 1.6 in single-stream blocks."""
    config = ToCaConfig(cache_ratio=0.9)
    assert fresh_ratio(config, 0, 0.4) == pytest.approx(0.1 * 1.5 * 0.4)
    assert fresh_ratio(config, 18, 0.4) == pytest.approx(0.1 * (1.5 - 18 / 27) * 0.4)
    assert fresh_ratio(config, 37, 1.6) == pytest.approx(0.1 * (1.5 - 37 / 27) * 1.6)
    assert fresh_ratio(ToCaConfig(cache_ratio=0.0), 0, 1.6) == 1.0  # clamped
    assert fresh_ratio(ToCaConfig(cache_ratio=0.7, schedule="constant"), 20, 1.6) == pytest.approx(0.3)


class _Recorder:
    """Each call's (input tokens, output) of one module, as the block saw them."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.calls.append((args[0].detach().clone(), output.detach().clone()))


def test_a_toca_step_recomputes_only_the_fresh_tokens_and_reuses_the_attention(flux) -> None:  # type: ignore[no-untyped-def]
    """Steps 0-2 and 5 are full (warm-up 3, interval 3), 3, 4, 6 and 7 ToCa steps. At a ToCa step the attention
    does not run, and of each token-wise module's output exactly the fresh half is what the module gives for
    this step's input; every other token keeps its output of the step before."""
    double, single = flux.transformer.transformer_blocks[0], flux.transformer.single_transformer_blocks[0]
    watched = {"double ff": double.ff, "single output": single.proj_out}
    recorders = {name: _Recorder(module) for name, module in watched.items()}
    attention_calls = [0]
    counter = double.attn.to_q.register_forward_pre_hook(
        lambda *a: attention_calls.__setitem__(0, attention_calls[0] + 1)
    )
    try:
        fast = ralu_core.accelerate(flux, with_cache("flux-baseline", TOCA))
        fast("a red circle", generator=seeded_generators(0), **CALL)
    finally:
        for recorder in recorders.values():
            recorder.handle.remove()
        counter.remove()
    assert attention_calls[0] == 4
    for name, recorder in recorders.items():
        module = watched[name]
        assert len(recorder.calls) == 8, name
        for step in (3, 4, 6, 7):
            (tokens, output), (_, before) = recorder.calls[step], recorder.calls[step - 1]
            with torch.no_grad():
                computed = module(tokens)  # right for the fresh tokens (the single block's others lack their MLP)
            fresh = (output - computed).abs().amax(-1) < 1e-6
            assert int(fresh.sum()) == tokens.shape[1] // 2, (name, step)
            assert bool((output == before)[~fresh].all()), (name, step)
    plain = ralu_core.accelerate(flux, "flux-baseline")("a red circle", generator=seeded_generators(0), **CALL)
    assert (fast("a red circle", generator=seeded_generators(0), **CALL).images - plain.images).abs().max() > 1e-4


def test_the_fresh_tokens_are_those_the_attention_picks_with_the_age_bonus(flux, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """At the first ToCa step the fresh half is the top half by attention received at the last full step; at
    the next one, tokens not computed since carry the bonus 0.25 x 1 / interval."""
    block = flux.transformer.transformer_blocks[0]
    blocks = len(flux.transformer.transformer_blocks) + len(flux.transformer.single_transformer_blocks)
    scores: list[torch.Tensor] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = attention_received(*args, **kwargs)
        scores.append(result[0])
        return result

    monkeypatch.setattr(received_module, "attention_received", recording)
    recorder = _Recorder(block.ff)
    try:
        ralu_core.accelerate(flux, with_cache("flux-baseline", TOCA))(
            "a red circle", generator=seeded_generators(0), **CALL
        )
    finally:
        recorder.handle.remove()
    assert len(scores) == 4 * blocks  # every block's attention, at the full steps only
    first_block = scores[::blocks]
    rows = recorder.calls[3][0].shape[1]
    image_score = F.normalize(first_block[2][:, -rows:], dim=-1)  # text first in FLUX: the image tokens are last
    picked = []
    for step in (3, 4):
        tokens, output = recorder.calls[step]
        with torch.no_grad():
            picked.append((output - block.ff(tokens)).abs().amax(-1)[0] < 1e-6)
    ages = torch.zeros(rows)
    for fresh in picked:
        expected = torch.argsort(image_score[0] + 0.25 * ages / 3, descending=True, stable=True)[: rows // 2]
        assert set(fresh.nonzero().flatten().tolist()) == set(expected.tolist())
        ages = torch.where(fresh, 0.0, ages + 1)


def test_a_batch_is_singles_with_cfg(sd3) -> None:  # type: ignore[no-untyped-def]
    """Scores, ages and fresh tokens are per image and per CFG branch (SD3: image tokens first)."""
    fast = ralu_core.accelerate(sd3, with_cache("sd3-baseline", TOCA))
    call = {**CALL, "width": 96}
    prompts = ["a red circle", "a blue square"]
    batch = fast(prompts, generator=seeded_generators(1, 2), **call).images
    singles = [fast(p, generator=seeded_generators(s), **call).images[0] for p, s in zip(prompts, (1, 2), strict=True)]
    torch.testing.assert_close(batch, torch.stack(singles), rtol=0, atol=2e-5)
    plain = ralu_core.accelerate(sd3, "sd3-baseline")("a red circle", generator=seeded_generators(1), **call).images
    assert (singles[0] - plain[0]).abs().max() > 1e-4


def test_the_papers_row_saves_its_tflops_within_ten_percent() -> None:
    """RALU 5x + ToCa (N=3, R=90 %) saves 130.73 TFLOPs in the paper (v3, Table 2; attention not counted)."""
    from ralu_flux.adapter import FluxAdapter
    from ralu_flux.flops_profile import FluxFlopsProfile

    registry = Registry.collect(create_plugin_manager())
    profile = FluxFlopsProfile.from_source("flux-dev")
    plain = recipe_cost(resolve_recipe(find_recipe("ralu-flux-5x", registry), registry), profile, 1024, 1024)
    runtime = resolve_recipe(find_recipe("ralu-flux-5x-toca", registry), registry)
    bind_to_adapter(FluxAdapter(), runtime)
    cost = recipe_cost(runtime, profile, 1024, 1024)
    saved = plain.total.tflops(False) - cost.total.tflops(False)
    assert saved == pytest.approx(130.73, rel=0.10)
    stage = cost.stages[2]
    kinds = dict(zip(stage.step_kinds, stage.step_costs, strict=True))
    full, partial = kinds["full, tokens scored"], kinds["fresh tokens only"]
    assert 0.05 * full.linear < partial.linear < 0.3 * full.linear  # modulation + ~10 % of the token-wise work
    assert partial.attention == 0 < full.attention  # no attention at a ToCa step
    assert full.attention == plain.stages[2].forward.attention  # the map is the attention's own: no extra work


def test_bad_settings_and_models_are_refused_before_any_work(sd3) -> None:  # type: ignore[no-untyped-def]
    from ralu_caching.unet import UNetAdapter
    from ralu_core.pipelines.adapter import adapter_problems

    with pytest.raises(ConfigFieldError, match=r"share of tokens reused \(R\), from 0.0 to 1.0, got 1.5"):
        ToCaConfig(cache_ratio=1.5)
    with pytest.raises(ConfigFieldError, match="must be one of published, constant"):
        ToCaConfig(schedule="linear")
    registry = Registry.collect(create_plugin_manager())
    runtime = resolve_recipe(with_cache("sd3-baseline", "toca"), registry)
    problems = adapter_problems(UNetAdapter(), runtime)
    assert any("the 'unet' adapter does not declare its blocks' token-wise modules" in p for p in problems)
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]: 'toca' reuses block features"):
        resolve_recipe(with_cache("ralu-ras-flux-7x", "toca"), registry)
    with pytest.raises(RecipeError, match="warm-up of 3 full computations per stage leaves nothing"):
        resolve_recipe(with_cache("ralu-flux-7x", "toca"), registry)
    with pytest.raises(RuntimeError, match="was not told its adapter"):
        ToCaCache(ToCaConfig()).attach(sd3.transformer)
