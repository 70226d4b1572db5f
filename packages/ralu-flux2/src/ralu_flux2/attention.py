"""FLUX.2 attention with what a token-level accelerator needs: positions per image, and cached keys/values.

FLUX.2 has two attention processors, and a stand-in for each:
- `Flux2TokenProcessor` stands in for ``Flux2AttnProcessor`` in the double-stream blocks (image and text
  projections, text first);
- `Flux2ParallelTokenProcessor` stands in for ``Flux2ParallelSelfAttnProcessor`` in the single-stream blocks, whose
  q/k/v projection is fused with the feed-forward's input, and whose output projection with the feed-forward's.

Each computes what its original computes, in the same order (projections, per-head q/k RMSNorm, RoPE on the whole
sequence, attention, output projections), and adds two things, as FLUX's stand-in does:
- RoPE per image: the transformer computes one rotary table per call from the first image's position ids, so a
  table per batch row is handed in through `rotary` and each row is rotated by its own;
- RAS: the image tokens' keys (after RoPE) and values go through the call's key/value store. The image tokens are
  the sequence's last ones in both kinds of block.

Where neither is asked for, the original processor runs untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from ralu_core.pipelines.diffusers_private import attention_dispatch_options
from ralu_core.pipelines.kv_store import KVStore, StandInProcessor, processor_problems
from ralu_core.pipelines.rotary import Rotary, rotate_rows

DEFAULT_PROCESSORS = {"attn": "Flux2AttnProcessor", "parallel": "Flux2ParallelSelfAttnProcessor"}


def attention_modules(transformer: Any) -> dict[str, Any]:
    """Every attention module of a Flux2Transformer2DModel, by module name."""
    modules = {f"transformer_blocks.{i}.attn": b.attn for i, b in enumerate(transformer.transformer_blocks)}
    for i, block in enumerate(transformer.single_transformer_blocks):
        modules[f"single_transformer_blocks.{i}.attn"] = block.attn
    return modules


def attention_problems(transformer: Any) -> list[str]:
    """Why the processors on `transformer` cannot be stood in for (empty: they can)."""
    double = {name: m for name, m in attention_modules(transformer).items() if name.startswith("transformer_")}
    single = {name: m for name, m in attention_modules(transformer).items() if name.startswith("single_")}
    return processor_problems(double, DEFAULT_PROCESSORS["attn"]) + processor_problems(
        single, DEFAULT_PROCESSORS["parallel"]
    )


def stand_in(
    original: Any, layer: str, store: Callable[[], KVStore | None], rotary: Callable[[], Rotary | None]
) -> Any:
    """The stand-in for the processor `original` of module `layer`."""
    kind = Flux2ParallelTokenProcessor if layer.startswith("single_") else Flux2TokenProcessor
    return kind(original, layer, store, rotary)


class _Flux2StandIn(StandInProcessor):
    def __init__(
        self, original: Any, layer: str, store: Callable[[], KVStore | None], rotary: Callable[[], Rotary | None]
    ) -> None:
        super().__init__(original, layer, store)
        self.rotary = rotary

    def _attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, image_rotary_emb: Any
    ) -> torch.Tensor:
        """RoPE (per row where given), the image keys and values through the store, attention; (B, S, H * D)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        rows_rotary = self.rotary()
        if rows_rotary is not None:
            query, key = rotate_rows(query, rows_rotary), rotate_rows(key, rows_rotary)
        elif image_rotary_emb is not None:
            query = cast(torch.Tensor, apply_rotary_emb(query, image_rotary_emb, sequence_dim=1))
            key = cast(torch.Tensor, apply_rotary_emb(key, image_rotary_emb, sequence_dim=1))
        store = self.store()
        if store is not None and store.route is not None:
            image = store.route.image_tokens or store.num_tokens
            text = key.shape[1] - image
            image_key, image_value = store.merge(self.layer, key[:, text:], value[:, text:], seq_dim=1)
            if store.route.active is not None:
                key = torch.cat([key[:, :text], image_key], dim=1)
                value = torch.cat([value[:, :text], image_value], dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, **attention_dispatch_options(self.original))
        return out.flatten(2, 3).to(query.dtype)  # type: ignore[no-any-return]

    def _asked(self) -> bool:
        store = self.store()
        return (store is not None and store.route is not None) or self.rotary() is not None


class Flux2TokenProcessor(_Flux2StandIn):
    """Flux2AttnProcessor with RoPE per batch row and the image tokens' keys and values through a `KVStore`."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        if not self._asked():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None or getattr(attn, "fused_projections", False):
            raise ValueError("ralu's FLUX.2 attention takes no attention mask and no fused projections")
        query, key, value = (
            project(hidden_states).unflatten(-1, (-1, attn.head_dim)) for project in (attn.to_q, attn.to_k, attn.to_v)
        )
        query, key = attn.norm_q(query), attn.norm_k(key)
        text_tokens = 0
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            text_query, text_key, text_value = (
                project(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
                for project in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
            query = torch.cat([text_query, query], dim=1)
            key = torch.cat([text_key, key], dim=1)
            value = torch.cat([text_value, value], dim=1)
            text_tokens = encoder_hidden_states.shape[1]
        hidden_states = self._attend(query, key, value, image_rotary_emb)
        if text_tokens:
            text, hidden_states = hidden_states.split_with_sizes(
                [text_tokens, hidden_states.shape[1] - text_tokens], dim=1
            )
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            return hidden_states, attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](hidden_states))


class Flux2ParallelTokenProcessor(_Flux2StandIn):
    """Flux2ParallelSelfAttnProcessor with RoPE per batch row and the image tokens' keys and values through a
    `KVStore`."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        if not self._asked():
            return self.original(attn, hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("ralu's FLUX.2 attention takes no attention mask")
        fused = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = fused.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = torch.split(fused, [local_qkv, fused.shape[-1] - local_qkv], dim=-1)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        hidden_states = self._attend(query, key, value, image_rotary_emb)
        return attn.to_out(torch.cat([hidden_states, attn.mlp_act_fn(mlp)], dim=-1))
