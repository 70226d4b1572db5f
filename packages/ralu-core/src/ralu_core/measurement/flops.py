"""Exact FLOP counts of arbitrary PyTorch callables, typically run on the meta device.

Why this exists: speed-up claims of training-free accelerators ("this schedule costs 40% of the
baseline") should rest on counted numbers rather than hand-derived estimates that silently drift from
the real architecture. Running a model on the ``meta`` device executes every operator's shape logic
without allocating memory or doing arithmetic, so even a 12B-parameter transformer can be "run" on a
laptop in well under a second, and :class:`torch.utils.flop_counter.FlopCounterMode` reports the exact
FLOPs of every matmul, convolution and attention call.

Conventions (those of ``FlopCounterMode``): one multiply-add is 2 FLOPs; only matmul-like operators are
counted (elementwise ops, norms, softmax and activations are ignored). Counts are split into

* ``linear``: products against weights -- ``mm``/``addmm``/``_scaled_mm``, convolutions, and
  ``bmm``/``baddbmm`` whose one operand is broadcast over the batch (a weight expanded by ``matmul``);
* ``attention``: the score and value products -- every scaled-dot-product / flash / efficient / flex
  attention operator (``4 * B * H * Sq * Sk * D`` for equal q/v head dims), every operator executed
  inside ``torch.nn.functional.scaled_dot_product_attention`` (on the meta device SDPA decomposes into
  two ``bmm`` calls, which are attributed here by that context), and any other ``bmm``/``baddbmm``,
  i.e. a product of two activations such as a hand-written ``q @ k.transpose(-1, -2)``;
* ``other``: whatever else the counter reports (e.g. custom or Triton kernel formulas).

This module is model-agnostic on purpose: it knows operators, not model classes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = ["FlopCount", "count_flops", "meta_module", "not_counted"]

_T = TypeVar("_T")

_aten = torch.ops.aten

_LINEAR_OP_NAMES = frozenset(
    {
        "mm",
        "addmm",
        "_scaled_mm",
        "convolution",
        "_convolution",
        "cudnn_convolution",
        "convolution_overrideable",
        "_slow_conv2d_forward",
        "convolution_backward",
    }
)
_BATCHED_MM_OP_NAMES = frozenset({"bmm", "baddbmm"})


@attrs.frozen
class FlopCount:
    """FLOPs (1 multiply-add = 2 FLOPs) split into weight products, attention products and the rest."""

    linear: int = 0
    attention: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """All counted FLOPs."""
        return self.linear + self.attention + self.other

    def __add__(self, rhs: FlopCount) -> FlopCount:
        if not isinstance(rhs, FlopCount):
            return NotImplemented
        return FlopCount(self.linear + rhs.linear, self.attention + rhs.attention, self.other + rhs.other)

    def __mul__(self, factor: int) -> FlopCount:
        if not isinstance(factor, int) or isinstance(factor, bool):
            return NotImplemented
        return FlopCount(self.linear * factor, self.attention * factor, self.other * factor)

    __rmul__ = __mul__

    def tflops(self, include_attention: bool = True) -> float:
        """Total in TFLOPs (1e12); ``include_attention=False`` gives the weight-bound part only."""
        flops = self.linear + self.other + (self.attention if include_attention else 0)
        return flops / 1e12


def _op_name(key: object) -> str:
    """Short operator name of a flop-registry key (``aten.mm`` -> ``mm``, ``flex_attention`` as is)."""
    name = getattr(key, "__name__", None) or str(key)
    return name.rsplit(".", 1)[-1]


def _broadcast_over_batch(tensor: object) -> bool:
    """True for a 3-d operand expanded along its batch dimension, i.e. a weight shared by the batch."""
    return isinstance(tensor, torch.Tensor) and tensor.dim() == 3 and tensor.shape[0] > 1 and tensor.stride(0) == 0


@attrs.define
class _Tally:
    """Mutable accumulator shared by the classifying formulas and the attention-scope mode."""

    linear: int = 0
    attention: int = 0
    other: int = 0
    attention_depth: int = 0

    def add(self, name: str, args: tuple[Any, ...], flops: int) -> None:
        if self.attention_depth > 0 or "attention" in name or "attn" in name:
            self.attention += flops
        elif name in _LINEAR_OP_NAMES:
            self.linear += flops
        elif name in _BATCHED_MM_OP_NAMES:
            # bmm(a, b) / baddbmm(c, a, b): the two matrix operands are the last two positional args.
            a, b = args[-2], args[-1]
            if _broadcast_over_batch(a) or _broadcast_over_batch(b):
                self.linear += flops
            else:
                self.attention += flops
        else:
            self.other += flops


class _AttentionScope(TorchFunctionMode):
    """Marks everything executed inside ``F.scaled_dot_product_attention`` as attention.

    Needed because SDPA on the meta device (and the math fallback elsewhere) decomposes into plain
    ``bmm`` calls before reaching the dispatcher-level counter.
    """

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self._tally = tally

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self._tally.attention_depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._tally.attention_depth -= 1


def _sdpa_shape_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """Score product (2*Sq*Sk*Dqk) plus value product (2*Sq*Sk*Dv) per batch and query head."""
    *batch_heads, s_q, d_qk = query.shape
    s_k, d_v = key.shape[-2], value.shape[-1]
    n = 1
    for size in batch_heads:
        n *= int(size)
    return 2 * n * int(s_q) * int(s_k) * (int(d_qk) + int(d_v))


def _cpu_flash_sdpa_flop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *args: Any,
    out_val: Any = None,
    **kwargs: Any,
) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu`` has no formula in torch's registry."""
    return _sdpa_shape_flops(query, key, value)


def _classifying_formulas(tally: _Tally) -> dict[Any, Callable[..., int]]:
    """Wrap every registered formula so each call's FLOPs are also booked into ``tally``."""
    base: dict[Any, Callable[..., int]] = dict(flop_registry)
    cpu_flash = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in base:
        base[cpu_flash] = _cpu_flash_sdpa_flop

    def wrap(key: Any, formula: Callable[..., int]) -> Callable[..., int]:
        name = _op_name(key)

        def classified(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            flops = int(formula(*args, out_val=out_val, **kwargs))
            tally.add(name, args, flops)
            return flops

        classified._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
        return classified

    return {key: wrap(key, formula) for key, formula in base.items()}


_COUNTING: contextvars.ContextVar[tuple[_Tally, FlopCounterMode] | None] = contextvars.ContextVar(
    "ralu_counting", default=None
)


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """Run ``fn()`` under ``FlopCounterMode`` and return its FLOPs split by kind (see module docs).

    ``fn`` decides about autograd; wrap the call in ``torch.no_grad()`` to count a forward only.
    """
    tally = _Tally()
    counter = FlopCounterMode(display=False, custom_mapping=_classifying_formulas(tally))
    token = _COUNTING.set((tally, counter))
    try:
        with counter, _AttentionScope(tally):
            fn()
    finally:
        _COUNTING.reset(token)
    result = FlopCount(tally.linear, tally.attention, tally.other)
    total = counter.get_total_flops()
    if result.total != total:  # pragma: no cover - would mean a formula escaped the wrapper
        raise RuntimeError(f"classified FLOPs {result.total} != FlopCounterMode total {total}")
    return result


@contextlib.contextmanager
def not_counted() -> Iterator[None]:
    """Inside `count_flops`: what runs in the block is left out of the count (outside: does nothing).

    For caches whose reusing step skips a module that the rest of the model still needs a tensor from:
    on the meta device the module runs, for its output's shape, and costs nothing in the count."""
    active = _COUNTING.get()
    if active is None:
        yield
        return
    tally, counter = active
    kept = attrs.evolve(tally), {scope: dict(ops) for scope, ops in counter.flop_counts.items()}
    try:
        yield
    finally:
        tally.linear, tally.attention, tally.other = kept[0].linear, kept[0].attention, kept[0].other
        counter.flop_counts.clear()
        for scope, ops in kept[1].items():
            counter.flop_counts[scope].update(ops)


def meta_module(cls: Callable[..., _T], config: Mapping[str, Any]) -> _T:
    """Build ``cls`` from a (diffusers-style) ``config`` on the meta device, in eval mode.

    No parameter memory is allocated and nothing is initialised, so even multi-billion-parameter
    models are built in milliseconds; use the result only for shape/FLOP analysis.
    """
    with torch.device("meta"):
        from_config = getattr(cls, "from_config", None)
        model = from_config(dict(config)) if from_config is not None else cls(**dict(config))
    eval_fn = getattr(model, "eval", None)
    if eval_fn is not None:
        eval_fn()
    return model


@functools.lru_cache(maxsize=32)
def _cached_meta(cls: Any, key: str) -> Any:
    return meta_module(cls, json.loads(key))


def cached_meta_module(cls: Any, config: Mapping[str, Any]) -> Any:
    """`meta_module`, cached per (class, config): counting many token counts reuses one model."""
    return _cached_meta(cls, json.dumps(dict(config), sort_keys=True))


def vae_decode_flops(
    vae_cls: Any, config: Mapping[str, Any], latent_height: int, latent_width: int, batch: int = 1
) -> FlopCount:
    """FLOPs of ``vae_cls(**config).decode`` on latents of ``latent_height x latent_width`` (no tiling).

    Decoding runs once per image after denoising (classifier-free guidance does not double it).
    """
    if latent_height <= 0 or latent_width <= 0 or batch <= 0:
        raise ValueError("latent sizes and batch must be positive")
    vae = cached_meta_module(vae_cls, config)
    latents = torch.empty(batch, vae.config.latent_channels, latent_height, latent_width, device="meta")
    with torch.no_grad():
        return count_flops(lambda: vae.decode(latents, return_dict=False))
