"""RAS attention for Lumina-Next: a sparse step's self-attention sees every token, the skipped ones through
cached keys and values, with the proportional scale of the full key length.

`CachedKVLuminaProcessor` stands in for diffusers' ``LuminaAttnProcessor2_0`` in each block's
self-attention (``attn1``) while a stage keeps keys and values. It computes what that processor computes,
in the same order: projections, q/k LayerNorm across heads, complex RoPE on queries and keys, the
proportional softmax scale sqrt(log_base(N)) / sqrt(d), grouped-query heads, the key mask. The keys (after
norm and RoPE: a cached key keeps the rotation of its own position) and values go through the call's store;
N is then the length of the keys attended, every token of the stage, as in the RAS authors' code. The
cross-attention (``attn2``) reads the text only, whose keys and values do not change: it is left alone.
Outside a routed evaluation the original processor runs untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ralu_core.pipelines.kv_store import StandInProcessor, processor_problems

DEFAULT_PROCESSOR = "LuminaAttnProcessor2_0"


def attention_modules(transformer: Any) -> dict[str, Any]:
    """The self-attention module of every LuminaNextDiT block, by module name."""
    return {f"layers.{i}.attn1": layer.attn1 for i, layer in enumerate(transformer.layers)}


def attention_problems(transformer: Any) -> list[str]:
    """Why the self-attention processors on `transformer` cannot be stood in for (empty: they can)."""
    return processor_problems(attention_modules(transformer), DEFAULT_PROCESSOR)


class CachedKVLuminaProcessor(StandInProcessor):
    """LuminaAttnProcessor2_0 (self-attention) with the image tokens' keys and values through a `KVStore`."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: torch.Tensor | None = None,
        key_rotary_emb: torch.Tensor | None = None,
        base_sequence_length: int | None = None,
    ) -> torch.Tensor:
        store = self.store()
        if store is None or store.route is None:
            return self.original(  # type: ignore[no-any-return]
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                query_rotary_emb,
                key_rotary_emb,
                base_sequence_length,
            )
        from diffusers.models.embeddings import apply_rotary_emb

        batch, queries = hidden_states.shape[0], hidden_states.shape[1]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        dtype = query.dtype
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query = query.view(batch, -1, attn.heads, head_dim)
        key, value = key.view(batch, -1, kv_heads, head_dim), value.view(batch, -1, kv_heads, head_dim)
        if query_rotary_emb is not None:
            query = apply_rotary_emb(query, query_rotary_emb, use_real=False)
        if key_rotary_emb is not None:
            key = apply_rotary_emb(key, key_rotary_emb, use_real=False)
        query, key = query.to(dtype), key.to(dtype)
        key, value = store.merge(self.layer, key, value, seq_dim=1)
        keys = key.shape[1]
        scale = attn.scale
        if base_sequence_length is not None:
            scale = math.sqrt(math.log(keys, base_sequence_length)) * attn.scale
        repeat = attn.heads // kv_heads
        key = key.unsqueeze(3).repeat(1, 1, 1, repeat, 1).flatten(2, 3)
        value = value.unsqueeze(3).repeat(1, 1, 1, repeat, 1).flatten(2, 3)
        # Every image token is attended (LuminaPatchEmbed's mask is all ones), the cached ones too.
        mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool, device=key.device).expand(-1, attn.heads, queries, -1)
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask, scale=scale
        )
        return out.transpose(1, 2).to(dtype)
