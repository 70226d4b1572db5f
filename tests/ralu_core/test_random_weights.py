"""Random-weight models built in place: deterministic, in the asked dtype, refused before allocation
when they cannot fit; random text embeddings that depend on the prompt alone."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

import ralu_core.measurement.random_weights as rw
from ralu_core.errors import RaluError

VAE = {"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 4, "layers_per_block": 1}


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_same_seed_gives_the_same_weights_in_the_asked_dtype_and_leaves_global_state() -> None:
    torch.manual_seed(123)
    before = torch.rand(())
    torch.manual_seed(123)
    first = rw.random_module(AutoencoderKL, VAE, "cpu", torch.bfloat16, seed=7)
    after = torch.rand(())
    assert torch.equal(before, after)  # the caller's random stream went on as if nothing was drawn
    assert torch.get_default_dtype() == torch.float32
    assert {p.dtype for p in first.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in first.parameters()) and not first.training
    again = rw.random_module(AutoencoderKL, VAE, "cpu", torch.bfloat16, seed=7)
    other = rw.random_module(AutoencoderKL, VAE, "cpu", torch.bfloat16, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(again), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(other), strict=True))


def test_weight_bytes_counts_every_parameter_at_the_dtypes_size() -> None:
    model = rw.random_module(AutoencoderKL, VAE, "cpu", torch.float32)
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    assert rw.weight_bytes([(AutoencoderKL, VAE)], torch.float32) == 4 * count
    assert rw.weight_bytes([(AutoencoderKL, VAE)] * 2, torch.bfloat16) == 2 * 2 * count


def test_weights_that_do_not_fit_are_refused_before_anything_is_allocated(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    need = rw.weight_bytes([(AutoencoderKL, VAE)], torch.float32)
    monkeypatch.setattr(rw, "free_memory", lambda device: need - 1)
    with pytest.raises(RaluError, match=r"the test VAE needs .* GiB for its weights in float32 and cpu has"):
        rw.check_fits("the test VAE", [(AutoencoderKL, VAE)], "cpu", torch.float32)
    monkeypatch.setattr(rw, "free_memory", lambda device: need)
    rw.check_fits("the test VAE", [(AutoencoderKL, VAE)], "cpu", torch.float32)


def test_the_cpu_reports_its_available_memory() -> None:
    free = rw.free_memory("cpu")
    assert free is not None and free > 2**20
    assert rw.free_memory("meta") is None


def test_random_text_is_a_function_of_prompt_and_salt() -> None:
    both = rw.random_text(["a cat", "a dog"], (3, 4), "cpu", torch.float32, salt="t5")
    assert both.shape == (2, 3, 4)
    assert torch.equal(both[1:], rw.random_text(["a dog"], (3, 4), "cpu", torch.float32, salt="t5"))
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(both[:1], rw.random_text(["a cat"], (3, 4), "cpu", torch.float32, salt="clip"))
    assert rw.random_text(["a cat"], (3,), "cpu", torch.bfloat16, salt="x").dtype == torch.bfloat16
