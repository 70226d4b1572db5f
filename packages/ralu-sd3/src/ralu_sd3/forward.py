"""SD3Transformer2DModel evaluated on a set of tokens instead of a dense latent image.

The model's own forward patchifies a dense latent and adds a cropped grid of position embeddings,
which mixed-resolution tokens do not have. So the tokens are laid out as a strip, one row of N
patches, and for the duration of the evaluation the model's patch embedding is swapped for one that
projects the strip with the model's own convolution and adds each token's own position embedding.
Everything else is the model's forward unchanged: every block with its attention processors,
per-head q/k RMSNorm (SD3.5), the second attention of SD3.5-medium's early blocks, norm_out,
proj_out, the unpatchify (which turns the strip back into tokens in order) and every hook a user or
a cache put on the transformer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ralu_core.pipelines.dit import swapped_submodule
from ralu_core.sampling.tokens import image_to_tokens, tokens_to_image


def embed_tokens(patch_embed: Any, tokens: torch.Tensor, position_embedding: torch.Tensor) -> torch.Tensor:
    """(B, N, C*p*p) latent patches -> (B, N, D) with the model's patch projection and the given
    per-token position embedding (B or 1, N, D)."""
    batch, count, _ = tokens.shape
    patch = int(patch_embed.patch_size)
    channels = tokens.shape[-1] // (patch * patch)
    projected = patch_embed.proj(tokens.reshape(batch * count, channels, patch, patch))  # the model's own conv
    hidden = projected.reshape(batch, count, -1)
    if getattr(patch_embed, "norm", None) is not None:
        hidden = patch_embed.norm(hidden)
    return (hidden + position_embedding.to(hidden.dtype)).to(hidden.dtype)


class _StripEmbedding(torch.nn.Module):
    """Stands in for the model's PatchEmbed during one evaluation of a token strip."""

    def __init__(self, patch_embed: Any, position_embedding: torch.Tensor) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.position_embedding = position_embedding

    def forward(self, strip: torch.Tensor) -> torch.Tensor:
        tokens = image_to_tokens(strip, int(self.patch_embed.patch_size))
        return embed_tokens(self.patch_embed, tokens, self.position_embedding)


def tokens_to_strip(tokens: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(B, N, C*p*p) tokens -> (B, C, p, N*p): one row of N patches, in token order."""
    return tokens_to_image(tokens, 1, tokens.shape[1], channels, patch)


@contextmanager
def strip_positions(transformer: Any, position_embedding: torch.Tensor) -> Iterator[None]:
    """While inside, the transformer embeds a token strip with `position_embedding` (B or 1, N, D);
    its own patch embedding is put back on exit, even after an error."""
    with swapped_submodule(transformer, "pos_embed", _StripEmbedding(transformer.pos_embed, position_embedding)):
        yield
