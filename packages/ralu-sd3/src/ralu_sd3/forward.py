"""SD3Transformer2DModel evaluated on a set of tokens instead of a dense latent image.

The model's own forward patchifies a dense latent and adds a cropped grid of position
embeddings, which mixed-resolution tokens do not have. This runs the same modules in the same
order (the patch projection, time/text embedders, every joint block with its attention processors,
norm_out, proj_out), so hooks, attention processors, per-head q/k RMSNorm (SD3.5) and the second
attention of SD3.5-medium's early blocks all apply unchanged; only the position embedding is
supplied per token.
"""

from __future__ import annotations

from typing import Any

import torch


def embed_tokens(transformer: Any, tokens: torch.Tensor, position_embedding: torch.Tensor) -> torch.Tensor:
    """(B, N, C*p*p) latent patches -> (B, N, D) with the model's patch projection and the given
    per-token position embedding (B or 1, N, D)."""
    patch_embed = transformer.pos_embed
    batch, count, _ = tokens.shape
    patch = int(patch_embed.patch_size)
    channels = tokens.shape[-1] // (patch * patch)
    projected = patch_embed.proj(tokens.reshape(batch * count, channels, patch, patch))  # the model's own conv
    hidden = projected.reshape(batch, count, -1)
    if getattr(patch_embed, "norm", None) is not None:
        hidden = patch_embed.norm(hidden)
    return (hidden + position_embedding.to(hidden.dtype)).to(hidden.dtype)


def token_forward(
    transformer: Any,
    tokens: torch.Tensor,
    position_embedding: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Velocity for each token, (B, N, C*p*p) in ralu's (channel, row, col) patch layout."""
    hidden = embed_tokens(transformer, tokens, position_embedding)
    temb = transformer.time_text_embed(timestep, pooled_projections)
    context = transformer.context_embedder(encoder_hidden_states)
    for block in transformer.transformer_blocks:
        context, hidden = block(
            hidden_states=hidden,
            encoder_hidden_states=context,
            temb=temb,
            joint_attention_kwargs=joint_attention_kwargs,
        )
    hidden = transformer.norm_out(hidden, temb)
    out = transformer.proj_out(hidden)  # (B, N, p * p * C_out) in (row, col, channel) order
    patch = int(transformer.config.patch_size)
    batch, count, _ = out.shape
    out = out.reshape(batch, count, patch, patch, -1).permute(0, 1, 4, 2, 3)
    return out.reshape(batch, count, -1)
