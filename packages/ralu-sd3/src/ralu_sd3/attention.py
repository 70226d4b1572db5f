"""RAS attention for SD3 and SD3.5: sparse steps attend to every token, the skipped ones through cached
keys/values.

`CachedKVJointProcessor` stands in for diffusers' ``JointAttnProcessor2_0`` in every attention module
while a stage keeps keys and values: the joint attention of each block and, in SD3.5-medium's early
blocks, the second, image-only attention (``attn2``), each its own layer in the store. It computes what
that processor computes, in the same order; the image tokens' keys and values, after SD3.5's per-head
q/k RMSNorm, go through the call's store (recorded at a dense step, merged with the inactive tokens'
cached entries at a sparse one) before the text tokens' are appended. Queries stay those of the
computed tokens. Outside a routed evaluation it hands the call to the original processor untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ralu_core.pipelines.kv_store import StandInProcessor, processor_problems

DEFAULT_PROCESSOR = "JointAttnProcessor2_0"


def attention_modules(transformer: Any) -> dict[str, Any]:
    """Every attention module of an SD3Transformer2DModel, by module name."""
    from diffusers.models.attention_processor import Attention

    return {name: module for name, module in transformer.named_modules() if isinstance(module, Attention)}


def attention_problems(transformer: Any) -> list[str]:
    """Why the processors on `transformer` cannot be stood in for (empty: they can)."""
    return processor_problems(attention_modules(transformer), DEFAULT_PROCESSOR)


def _heads(tensor: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
    return tensor.view(batch, -1, heads, head_dim).transpose(1, 2)


class CachedKVJointProcessor(StandInProcessor):
    """JointAttnProcessor2_0 with the image tokens' keys and values routed through a `KVStore`."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        store = self.store()
        if store is None or store.route is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch, image_tokens = hidden_states.shape[0], hidden_states.shape[1]
        query, key, value = (project(hidden_states) for project in (attn.to_q, attn.to_k, attn.to_v))
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (_heads(t, batch, attn.heads, head_dim) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        key, value = store.merge(self.layer, key, value, seq_dim=2)

        if encoder_hidden_states is not None:
            text_query, text_key, text_value = (
                _heads(project(encoder_hidden_states), batch, attn.heads, head_dim)
                for project in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            if attn.norm_added_q is not None:
                text_query = attn.norm_added_q(text_query)
            if attn.norm_added_k is not None:
                text_key = attn.norm_added_k(text_key)
            query = torch.cat([query, text_query], dim=2)
            key = torch.cat([key, text_key], dim=2)
            value = torch.cat([value, text_value], dim=2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :image_tokens], hidden_states[:, image_tokens:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states if encoder_hidden_states is None else (hidden_states, encoder_hidden_states)
