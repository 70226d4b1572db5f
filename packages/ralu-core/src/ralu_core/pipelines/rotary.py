"""Rotary position embeddings with one table per batch row, for the stand-in attention processors of models whose
transformer computes one table per call (FLUX, FLUX.2): images whose tokens sit at different positions (RALU's
mixed stage, RAS's sparse steps) then share one call, each rotated by its own table with diffusers' arithmetic."""

from __future__ import annotations

import torch

Rotary = tuple[torch.Tensor, torch.Tensor]
"""(cos, sin), each (rows, sequence, head_dim): one rotary embedding per batch row."""


def rotate_rows(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` (real form, interleaved pairs, as FLUX's) on (B, S, H, D) with a rotary per
    row."""
    cos, sin = (t[:, :, None, :].to(x.device) for t in rotary)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)
