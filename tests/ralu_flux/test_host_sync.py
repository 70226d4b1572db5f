"""No host-device synchronisation in FLUX's sampling loop but the Canny selector's, seen on the CPU by the recorder."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.cli import main
from ralu_core.measurement.host_sync import HostSyncRecorder, record_syncs
from ralu_core.sampling.tokens import TokenGrid, TokenState, dense_level, downsample_nearest
from ralu_core.testing.conformance import CANNY_SYNCS
from ralu_flux.adapter import FluxCall

CALL = {"max_sequence_length": 16, "output_type": "latent", "height": 128, "width": 128}

CANNY = CANNY_SYNCS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loop_syncs(pipe: Any, recipe: str, batch: int = 1, **kwargs: Any) -> Counter[str]:
    prompts = ["a red circle", "a blue square"][:batch]
    accelerated = ralu_core.accelerate(pipe, recipe)
    with HostSyncRecorder.step_loop() as recorder:
        accelerated(prompts, generator=[gen(i) for i in range(batch)], **CALL, **kwargs)
    return Counter(record.where for record in recorder.records)


@pytest.mark.parametrize("recipe", ["ralu-flux-7x", "ralu-ras-flux-7x"])
def test_a_batch_at_different_positions_compares_nothing(pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    # Each image upsampled its own tokens: one call with RoPE per row, without comparing their positions.
    assert loop_syncs(pipe, recipe, batch=2) == CANNY  # OpenCV's maps of both images go back in one copy each


def test_the_recorder_catches_a_scalar_read_and_a_mask_inside_the_loop(pipe, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    original = FluxCall.predict

    def predict(self: FluxCall, state: TokenState, sigma: torch.Tensor, active: Any, **kwargs: Any) -> torch.Tensor:
        if sigma.item() > 2:  # a sync on every step
            raise AssertionError("unreachable")
        _ = state.values[state.values > 0]  # a boolean mask: the output's shape depends on the data
        return original(self, state, sigma, active, **kwargs)

    monkeypatch.setattr(FluxCall, "predict", predict)
    with HostSyncRecorder.step_loop() as recorder:
        ralu_core.accelerate(pipe, "flux-baseline")("a cat", generator=gen(0), num_inference_steps=3, **CALL)
    kinds = Counter((r.op, r.kind, r.where, str(r.caller).split(":")[0]) for r in recorder.records)
    site = "ralu_core/sampling/engine.py in SamplingEngine._run_stage.<locals>.compute"  # ralu's frame that called it
    assert kinds == {
        ("aten._local_scalar_dense", "scalar", site, "test_host_sync.py"): 3,
        ("aten.index", "dynamic-shape", site, "test_host_sync.py"): 3,
    }


def test_each_kind_of_sync_on_plain_tensors() -> None:
    x = torch.arange(6.0)
    mask = x > 2

    def run() -> None:
        float(x[1])  # scalar
        _ = x[mask]  # dynamic shape
        mask.nonzero()
        x.repeat_interleave(torch.ones(6, dtype=torch.long))
        torch.equal(x, x)
        torch.tensor([1, 2])  # host data
        x.repeat_interleave(2)  # fixed output size: fine
        x.repeat_interleave(torch.ones(6, dtype=torch.long), output_size=6)
        torch.where(mask, x, -x)  # fine

    recorder = record_syncs(run)
    assert [(r.op, r.kind) for r in recorder.records] == [
        ("aten._local_scalar_dense", "scalar"),
        ("aten.index", "dynamic-shape"),
        ("aten.nonzero", "dynamic-shape"),
        ("aten.repeat_interleave", "dynamic-shape"),
        ("aten.equal", "scalar"),
        ("aten.lift_fresh", "host-data"),
    ]
    assert "no host-device synchronisation" in record_syncs(lambda: x * 2).format_summary()
    assert "test_host_sync.py" in recorder.format_summary()


def test_scope_keeps_only_what_runs_under_the_given_functions() -> None:
    x = torch.arange(3.0)

    def inside() -> float:
        return float(x.sum())

    def outside() -> float:
        return float(x.max())

    recorder = record_syncs(lambda: (inside(), outside()), scope=[inside.__code__])
    assert [r.site.rsplit(" in ", 1)[1] for r in recorder.records] == [
        "test_scope_keeps_only_what_runs_under_the_given_functions.<locals>.inside"
    ]


def test_a_state_with_replaced_tensors_reads_them_again() -> None:
    grid = TokenGrid(rows=4, cols=4, channels=1, patch=2)
    state = TokenState.full_resolution(torch.zeros(1, 16, 4), grid)
    with HostSyncRecorder() as recorder:
        assert dense_level(state) == 0 and downsample_nearest(state).coarsest_level == 1
    assert recorder.records == []  # known from how the states were made
    state.levels = torch.ones_like(state.levels)  # no longer what its layout describes
    with HostSyncRecorder() as recorder:
        assert state.coarsest_level == 1 and dense_level(state) is None
    assert recorder.records
    changed = TokenState.full_resolution(torch.zeros(1, 16, 4), grid)
    changed.levels[0, 3] = 1  # changed in place: its layout no longer holds either
    assert changed.coarsest_level == 1 and dense_level(changed) is None


def test_bench_reports_each_recipes_host_syncs_also_when_compiled(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    argv = ["bench", "--model", "flux-tiny", "--height", "128", "--width", "128", "--steps", "4", "--no-decode"]
    argv += ["--recipes", "flux-baseline", "ralu-flux-7x", "--host-syncs", "--call-arg", "max_sequence_length=16"]
    argv += ["--compile", "default", "--compile-backend", "eager", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "Host-device synchronisations in the sampling loop" in capsys.readouterr().out
    syncs = json.loads((tmp_path / "report.json").read_text())["host_syncs"]
    assert syncs["flux-baseline"] == []
    assert [line.split("  ", 1)[1].split(":")[0] for line in syncs["ralu-flux-7x"]] == [
        "ralu_core/strategies/selectors.py",
        "ralu_core/strategies/selectors.py",
    ]
    assert all("CannyEdgeSelector" in line for line in syncs["ralu-flux-7x"])
