"""FLOP counting: conventions (1 MAC = 2 FLOPs), classification, and SDPA on meta and CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ralu_core.measurement.flops import FlopCount, count_flops, meta_module


def test_flopcount_arithmetic() -> None:
    a = FlopCount(linear=10, attention=4, other=1)
    b = FlopCount(linear=1, attention=2, other=3)
    assert a.total == 15
    assert a + b == FlopCount(11, 6, 4)
    assert a * 3 == 3 * a == FlopCount(30, 12, 3)
    assert FlopCount(2 * 10**12, 10**12, 0).tflops() == pytest.approx(3.0)
    assert FlopCount(2 * 10**12, 10**12, 0).tflops(include_attention=False) == pytest.approx(2.0)
    assert sum([a, b], FlopCount()) == a + b


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_counts_two_flops_per_mac(device: str) -> None:
    with torch.device(device):
        layer = torch.nn.Linear(64, 32)
        x = torch.empty(3, 64)
    with torch.no_grad():
        flops = count_flops(lambda: layer(x))
    assert flops == FlopCount(linear=2 * 3 * 64 * 32, attention=0, other=0)


def test_linear_on_3d_input_and_conv() -> None:
    with torch.device("meta"):
        layer = torch.nn.Linear(16, 8, bias=False)
        conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        x = torch.empty(2, 5, 16)
        img = torch.empty(1, 3, 16, 16)
    assert count_flops(lambda: layer(x)).linear == 2 * 2 * 5 * 16 * 8
    assert count_flops(lambda: conv(img)) == FlopCount(linear=2 * 16 * 16 * 8 * 3 * 3 * 3)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_sdpa_counts_4_bhsqskd(device: str) -> None:
    # CPU dispatches to a fused kernel torch's registry has no formula for; meta decomposes SDPA into
    # two bmm calls. Both must give 2*B*H*Sq*Sk*D (scores) + 2*B*H*Sq*Sk*D (values).
    b, h, sq, sk, d = 2, 3, 10, 12, 8
    q = torch.randn(b, h, sq, d, device=device)
    k = torch.randn(b, h, sk, d, device=device)
    v = torch.randn(b, h, sk, d, device=device)
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == FlopCount(linear=0, attention=4 * b * h * sq * sk * d, other=0)


def test_sdpa_with_different_value_dim_and_broadcast_inputs() -> None:
    # Inside SDPA everything is attention, even a bmm whose operands are batch-broadcast.
    q = torch.empty(1, 2, 5, 4, device="meta").expand(3, 2, 5, 4)
    k = torch.empty(1, 1, 7, 4, device="meta").expand(3, 2, 7, 4)
    v = torch.empty(3, 2, 7, 6, device="meta")
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == FlopCount(attention=2 * 3 * 2 * 5 * 7 * (4 + 6))


def test_handwritten_attention_is_attention_and_broadcast_weight_bmm_is_linear() -> None:
    q = torch.empty(2, 4, 10, 8, device="meta")
    k = torch.empty(2, 4, 12, 8, device="meta")
    scores = count_flops(lambda: q @ k.transpose(-1, -2))
    assert scores == FlopCount(attention=2 * 2 * 4 * 10 * 12 * 8)
    x = torch.empty(4, 10, 8, device="meta")
    w = torch.empty(1, 8, 5, device="meta").expand(4, 8, 5)
    assert count_flops(lambda: torch.bmm(x, w)) == FlopCount(linear=2 * 4 * 10 * 8 * 5)


def test_elementwise_ops_are_free() -> None:
    x = torch.empty(100, 100, device="meta")
    assert count_flops(lambda: (x * 2 + 1).softmax(-1)) == FlopCount()


def test_meta_module_allocates_nothing() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(width, width)

    model = meta_module(Tiny, {"width": 4096})
    assert model.proj.weight.is_meta
    assert not model.training


def test_what_runs_not_counted_is_left_out_of_the_count_and_nothing_outside_one() -> None:
    """Caches count a reusing step by running the skipped modules for their shapes only."""
    from ralu_core.measurement.flops import not_counted

    layer = torch.nn.Linear(8, 4, device="meta")
    x = torch.empty(2, 8, device="meta")
    once = count_flops(lambda: layer(x))
    assert once.linear == 2 * 2 * 8 * 4

    def partly() -> None:
        layer(x)
        with not_counted():
            layer(layer(torch.empty(2, 8, device="meta")).new_empty(2, 8))
        layer(x)

    assert count_flops(partly) == once * 2
    with not_counted():  # outside a count it does nothing
        assert layer(x).shape == (2, 4)
