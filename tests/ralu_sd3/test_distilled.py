"""RALU on SD3.5-Large-Turbo: `ralu flops` quotes the RALU paper's Table 2 rows (its convention: text encoders
counted, against SD3.5-Large at 28 steps with one transformer pass per step), and `ralu-sd35-turbo` runs a
turbo-shaped call (guidance 0: no CFG batch) in its 1 + 1 + 2 steps."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from ralu_core import accelerate
from ralu_core.cli import main
from ralu_sd3.testing import make_sd3_pipeline


def flops(capsys: Any, *args: str) -> dict[str, Any]:
    assert main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_the_paper_s_turbo_rows_in_its_convention_and_in_ours(capsys: Any) -> None:
    paper = ["--model", "sd35-large-turbo", "--against", "sd35-large", "--against-cfg", "off"]
    paper += ["--text-encoders", "include"]
    baseline = flops(capsys, "--recipe", "sd3-baseline", *paper)
    ralu = flops(capsys, "--recipe", "ralu-sd35-turbo", *paper)
    # RALU v3, Table 2 (TFLOPs without attention): SD3.5-Large-Turbo 107.93, 6.31x; + RALU 82.23, 8.28x.
    assert baseline["tflops"] == pytest.approx(107.93, rel=2e-3)
    assert baseline["against"]["linear_only"]["speedup"] == pytest.approx(6.31, abs=0.01)
    assert ralu["tflops"] == pytest.approx(82.23, rel=2e-3)
    assert ralu["against"]["linear_only"]["speedup"] == pytest.approx(8.28, abs=0.02)
    # With SD3.5-Large's CFG batch counted, as its pipeline runs it at its default guidance, the gap doubles.
    with_cfg = flops(capsys, "--recipe", "ralu-sd35-turbo", "--model", "sd35-large-turbo", "--against", "sd35-large")
    assert with_cfg["against"]["linear_only"]["speedup"] == pytest.approx(2 * 8.51, rel=0.01)
    assert with_cfg["speedup"] == pytest.approx(1.32, abs=0.01)  # against the turbo model's own 4 steps


def test_ralu_on_a_turbo_call_runs_four_steps_without_a_cfg_batch() -> None:
    pipe = make_sd3_pipeline("sd35-tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    batches: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        out = accelerate(pipe, "ralu-sd35-turbo")(
            ["a red circle", "a blue square"],
            height=64,
            width=96,
            guidance_scale=0.0,
            max_sequence_length=8,
            output_type="latent",
            generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        )
    finally:
        hook.remove()
    assert torch.isfinite(out.images).all()
    assert batches == [2] * 4  # 1 + 1 + 2 steps, the two images without a CFG copy
