"""How much attention each token receives in a module's scaled-dot-product attention: ToCa's token score.

ToCa ranks tokens by the attention map of the last full step: the softmax probabilities averaged over heads
and over queries, one value per key token. diffusers' attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (its native backend), which never returns the map, so
`AttentionReceived` takes that call over inside one module's forward (a torch function mode: no processor is
replaced, any model whose attention reaches SDPA works) and computes the attention explicitly, as ToCa's
official code does, a few heads at a time so that no more than `MAP_BYTES` of the map exists at once: the
output from the map, and the score from the same map. `ralu flops` counts these products as attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

MAP_BYTES = 1 << 28
"""The most memory one slice of the attention map may take (256 MiB)."""


def attention_received(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(score, output): the softmax attention probabilities of (B, H, S_query, D) queries over (B, H, S_key, D)
    keys, averaged over heads and queries, in float32, (B, S_key); and, given the values, the attention's
    output from the same probabilities (what SDPA returns, up to rounding), so that the map is made once."""
    batch, heads, queries, width = query.shape
    keys = key.shape[-2]
    if key.shape[1] != heads:  # grouped-query attention: each key head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = None if value is None else value.repeat_interleave(heads // value.shape[1], dim=1)
    factor = scale if scale is not None else width**-0.5
    per_slice = max(1, MAP_BYTES // max(1, batch * queries * keys * 4))
    total = torch.zeros(batch, keys, dtype=torch.float32, device=query.device)
    # Queries a key mask marks as padding (a joint sequence masking its padded text, as Qwen-Image's) are left out
    # of the average: what they attend to depends on the batch they were padded in.
    counted = _real_queries(attn_mask, batch, queries)
    outputs = []
    for start in range(0, heads, per_slice):
        part = slice(start, start + per_slice)
        logits = (query[:, part].float() @ key[:, part].float().transpose(-1, -2)) * factor
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() < 4 or attn_mask.shape[1] == 1 else attn_mask[:, part]
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        probabilities = logits.softmax(dim=-1)
        if counted is None:
            total = total + probabilities.sum(dim=(1, 2))
        else:
            total = total + (probabilities * counted[:, None, :, None]).sum(dim=(1, 2))
        if value is not None:
            outputs.append((probabilities @ value[:, part].float()).to(value.dtype))
    output = torch.cat(outputs, dim=1) if value is not None else None
    real = queries if counted is None else counted.sum(dim=-1, keepdim=True)
    return total / (heads * real), output


def _real_queries(attn_mask: torch.Tensor | None, batch: int, queries: int) -> torch.Tensor | None:
    """(B, S_query) 1 for the queries a boolean key mask over the same sequence keeps, 0 for padding; None where
    every query counts (no mask, a mask that varies per query, or keys of another length). A cross-attention whose
    key count happened to equal its query count would be taken for a joint sequence: no adapter's is (Lumina-Next
    expands its cross-attention mask per query)."""
    if attn_mask is None or attn_mask.dtype != torch.bool or attn_mask.dim() != 4:
        return None
    if attn_mask.shape[1] != 1 or attn_mask.shape[2] != 1 or attn_mask.shape[3] != queries:
        return None
    return attn_mask[:, 0, 0, :].expand(batch, queries).float()


class AttentionReceived(TorchFunctionMode):
    """Inside ``with seen:`` (a new instance), the first SDPA call is computed explicitly and its score kept in
    `seen.score` (None if no SDPA ran); later calls run unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.score: torch.Tensor | None = None

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.score is not None:
            return func(*args, **kwargs)
        given = dict(zip(SDPA_ARGUMENTS, args, strict=False)) | kwargs
        if given.get("is_causal"):
            raise ValueError("ToCa's token score is defined for full (non-causal) attention only")
        if given.get("dropout_p") or given.get("enable_gqa"):  # not made from the map: SDPA runs as well
            self.score, _ = attention_received(given["query"], given["key"], given.get("attn_mask"), given.get("scale"))
            return func(*args, **kwargs)
        self.score, output = attention_received(
            given["query"], given["key"], given.get("attn_mask"), given.get("scale"), given["value"]
        )
        return output
