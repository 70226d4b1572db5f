"""Qwen-Image attention with what a token-level accelerator needs: positions per image, and cached keys/values.

`QwenTokenProcessor` stands in for diffusers' ``QwenDoubleStreamAttnProcessor2_0`` in the joint attention of
every QwenImageTransformerBlock while a call needs it. It computes what that processor computes, in the same
order: the image and text projections, per-head q/k RMSNorm, complex RoPE on each stream, text first in the
joint sequence, the text padding mask. Two things are added:

* RoPE per image: the transformer builds one rotary table per call from ``img_shapes``, so images whose tokens
  sit at different positions (RALU's mixed stage, RAS's sparse steps) could not share a call. Given a table per
  batch row (B, S, head_dim / 2), each row is rotated by its own, with the same arithmetic.
* RAS: the image keys (after RoPE: a cached key keeps the rotation of its own position) and values go through the
  call's key/value store; the text's are computed at every step.

Where neither is asked for, it hands the call to the original processor untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.pipelines.diffusers_private import attention_dispatch_options
from ralu_core.pipelines.kv_store import StandInProcessor, processor_problems

DEFAULT_PROCESSOR = "QwenDoubleStreamAttnProcessor2_0"


def attention_modules(transformer: Any) -> dict[str, Any]:
    """The joint attention module of every QwenImageTransformerBlock, by module name."""
    return {f"transformer_blocks.{i}.attn": block.attn for i, block in enumerate(transformer.transformer_blocks)}


def attention_problems(transformer: Any) -> list[str]:
    """Why the processors on `transformer` cannot be stood in for (empty: they can)."""
    return processor_problems(attention_modules(transformer), DEFAULT_PROCESSOR)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb_qwen`` (complex form) on (B, S, H, D), with `freqs` (S, D / 2) shared by the
    batch or (B, S, D / 2), one table per row."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    freqs = freqs.unsqueeze(1) if freqs.dim() == 2 else freqs.unsqueeze(2)
    return torch.view_as_real(pairs * freqs).flatten(3).type_as(x)


class QwenTokenProcessor(StandInProcessor):
    """QwenDoubleStreamAttnProcessor2_0 with RoPE per batch row and the image tokens' keys and values through a
    `KVStore`."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Any:
        store = self.store()
        routed = store is not None and store.route is not None
        per_row = image_rotary_emb is not None and image_rotary_emb[0].dim() == 3
        if not routed and not per_row:
            return self.original(
                attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, attention_mask, image_rotary_emb
            )
        if attention_mask is not None:
            raise ValueError("QwenDoubleStreamAttnProcessor2_0 takes no external attention_mask")
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        head_dim = attn.inner_dim // attn.heads

        def heads(project: Any, x: torch.Tensor) -> torch.Tensor:
            return project(x).unflatten(-1, (-1, head_dim))  # type: ignore[no-any-return]

        image_query, image_key, image_value = (heads(p, hidden_states) for p in (attn.to_q, attn.to_k, attn.to_v))
        text_query, text_key, text_value = (
            heads(p, encoder_hidden_states) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_q is not None:
            image_query = attn.norm_q(image_query)
        if attn.norm_k is not None:
            image_key = attn.norm_k(image_key)
        if attn.norm_added_q is not None:
            text_query = attn.norm_added_q(text_query)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            image_query, image_key = rotate(image_query, image_freqs), rotate(image_key, image_freqs)
            text_query, text_key = rotate(text_query, text_freqs), rotate(text_key, text_freqs)
        if store is not None and store.route is not None:
            image_key, image_value = store.merge(self.layer, image_key, image_value, seq_dim=1)
        mask = None
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(
                image_key.shape[:2], dtype=torch.bool, device=hidden_states.device
            )  # every image token is attended, the cached ones too
            mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        query = torch.cat([text_query, image_query], dim=1)
        key = torch.cat([text_key, image_key], dim=1)
        value = torch.cat([text_value, image_value], dim=1)
        joint = dispatch_attention_fn(query, key, value, attn_mask=mask, **attention_dispatch_options(self.original))
        joint = joint.flatten(2, 3).to(query.dtype)
        text = encoder_hidden_states.shape[1]
        image_out = attn.to_out[0](joint[:, text:].contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)
        return image_out, attn.to_add_out(joint[:, :text].contiguous())
