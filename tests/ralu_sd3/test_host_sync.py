"""No host-device synchronisation in SD3's sampling loop but the Canny selector's, seen on the CPU by the recorder."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

import ralu_core
from ralu_core.measurement.host_sync import HostSyncRecorder
from ralu_core.testing.conformance import CANNY_SYNCS
from ralu_sd3.positions import SinCosGrid

CALL = {"max_sequence_length": 8, "output_type": "latent", "height": 128, "width": 128}

CANNY = CANNY_SYNCS


def loop_syncs(pipe: Any, recipe: str, batch: int = 1, **kwargs: Any) -> Counter[str]:
    prompts = ["a red circle", "a blue square"][:batch]
    generators = [torch.Generator().manual_seed(i) for i in range(batch)]
    with HostSyncRecorder.step_loop() as recorder:
        ralu_core.accelerate(pipe, recipe)(prompts, generator=generators, **CALL, **kwargs)
    return Counter(record.where for record in recorder.records)


def test_a_batch_of_sd35_images_at_their_own_positions(sd35) -> None:  # type: ignore[no-untyped-def]
    assert loop_syncs(sd35, "ralu-ras-sd3-3x", batch=2) == CANNY


def test_the_recorder_sees_a_reinserted_position_tensor(sd3, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The crop offsets as a tensor of Python numbers, as they were: a host-to-device copy at every strip step.
    original = SinCosGrid.embed

    def embed(self: SinCosGrid, positions: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        offset = torch.tensor([0.0, 0.0], dtype=torch.float64, device=positions.device)
        return original(self, positions + offset, rows, cols)

    monkeypatch.setattr(SinCosGrid, "embed", embed)
    syncs = loop_syncs(sd3, "ralu-sd3-3x")
    strip_steps = 3  # stage 2 of ralu-sd3-3x mixes levels: its tokens go through the strip forward
    assert syncs - CANNY == Counter({"ralu_sd3/call.py in SD3Call.predict": strip_steps})
