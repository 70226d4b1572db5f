"""FLUX attention with what a token-level accelerator needs: positions per image, and cached keys/values.

`FluxTokenProcessor` stands in for diffusers' ``FluxAttnProcessor`` in every attention module (the 19
double-stream and 38 single-stream blocks of FLUX.1-dev) while a call needs it. It computes what that
processor computes, in the same order: projections, per-head q/k RMSNorm, the text tokens placed first,
RoPE on the whole sequence. Two things are added:

* RoPE per image: FLUX computes one rotary embedding per call, so images whose tokens sit at different
  positions (RALU's mixed stage, where each image upsampled its own edges; RAS's sparse steps) could not
  share a call. Given one embedding per batch row, each row is rotated by its own, with the same
  arithmetic, so a batch gives what each image alone gives.
* RAS: the image part of the keys and values, after RoPE (a cached key keeps the rotation of its own
  position), goes through the call's key/value store: recorded at a dense step, merged with the inactive
  tokens' cached entries at a sparse one. The queries stay those of the tokens computed.

Where neither is asked for, it hands the call to the original processor untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ralu_core.pipelines.diffusers_private import attention_dispatch_options
from ralu_core.pipelines.kv_store import KVStore, StandInProcessor, processor_problems
from ralu_core.pipelines.rotary import Rotary, rotate_rows

DEFAULT_PROCESSOR = "FluxAttnProcessor"


def attention_modules(transformer: Any) -> dict[str, Any]:
    """Every attention module of a FluxTransformer2DModel, by module name."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    return {name: module for name, module in transformer.named_modules() if isinstance(module, FluxAttention)}


def attention_problems(transformer: Any) -> list[str]:
    """Why the processors on `transformer` cannot be stood in for (empty: they can)."""
    return processor_problems(attention_modules(transformer), DEFAULT_PROCESSOR)


class FluxTokenProcessor(StandInProcessor):
    """FluxAttnProcessor with RoPE per batch row and the image tokens' keys and values through a `KVStore`."""

    def __init__(
        self,
        original: Any,
        layer: str,
        store: Callable[[], KVStore | None],
        rotary: Callable[[], Rotary | None] = lambda: None,
    ) -> None:
        super().__init__(original, layer, store)
        self.rotary = rotary

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        store, rows_rotary = self.store(), self.rotary()
        routed = store is not None and store.route is not None
        if not routed and rows_rotary is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("ralu's FLUX attention (positions per image, cached keys/values) takes no attention mask")
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        query, key, value = (
            project(hidden_states).unflatten(-1, (-1, attn.head_dim)) for project in (attn.to_q, attn.to_k, attn.to_v)
        )
        query, key = attn.norm_q(query), attn.norm_k(key)
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            text_query, text_key, text_value = (
                project(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
                for project in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
            query = torch.cat([text_query, query], dim=1)
            key = torch.cat([text_key, key], dim=1)
            value = torch.cat([text_value, value], dim=1)
        if rows_rotary is not None:
            query, key = rotate_rows(query, rows_rotary), rotate_rows(key, rows_rotary)
        elif image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if store is not None and store.route is not None:
            # The image tokens are the last ones: after the text in double blocks (concatenated above) and in
            # single blocks (concatenated by the block).
            image = store.route.image_tokens or store.num_tokens
            text = key.shape[1] - image
            image_key, image_value = store.merge(self.layer, key[:, text:], value[:, text:], seq_dim=1)
            if store.route.active is not None:
                key = torch.cat([key[:, :text], image_key], dim=1)
                value = torch.cat([value[:, :text], image_value], dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=None,
            **attention_dispatch_options(self.original),
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states
