"""RALU on FLUX.1-schnell: `ralu flops` quotes the RALU paper's Table 2 rows (its convention: text encoders
counted, against FLUX.1-dev at 50 steps), and `ralu-flux-schnell` runs a schnell-shaped pipeline (no guidance
embedding, shift 1.0) in its 1 + 1 + 2 steps."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from ralu_core import accelerate
from ralu_core.cli import main
from ralu_flux.testing import make_flux_schnell_pipeline


def flops(capsys: Any, *args: str) -> dict[str, Any]:
    assert main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_the_paper_s_schnell_rows_in_its_convention_and_in_ours(capsys: Any) -> None:
    paper = ["--model", "flux-schnell", "--against", "flux-dev", "--text-encoders", "include"]
    baseline = flops(capsys, "--recipe", "flux-baseline", *paper)
    ralu = flops(capsys, "--recipe", "ralu-flux-schnell", *paper)
    # RALU v3, Table 2 (TFLOPs without attention): schnell 252.88, 11.83x; + RALU 187.92, 15.91x.
    assert baseline["tflops"] == pytest.approx(252.88, rel=2e-3)
    assert baseline["against"]["linear_only"]["speedup"] == pytest.approx(11.83, abs=0.01)
    assert ralu["tflops"] == pytest.approx(187.92, rel=2e-3)
    assert ralu["against"]["linear_only"]["speedup"] == pytest.approx(15.91, abs=0.02)
    assert ralu["text_encoders"] == "included" and ralu["text_encoder_tflops"] == pytest.approx(4.75, abs=0.01)
    # Ours: against schnell's own 4 steps, text encoders left out.
    own = flops(capsys, "--recipe", "ralu-flux-schnell", "--model", "flux-schnell")
    assert own["baseline_steps"] == 4 and own["text_encoders"] == "excluded"
    assert own["speedup"] == pytest.approx(1.35, abs=0.01)


def test_ralu_on_a_schnell_shaped_pipeline_runs_its_four_steps_without_guidance() -> None:
    pipe = make_flux_schnell_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    guidance: list[Any] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: guidance.append(kwargs["guidance"]), with_kwargs=True
    )
    try:
        out = accelerate(pipe, "ralu-flux-schnell")(
            ["a red circle", "a blue square"],
            height=64,
            width=96,
            max_sequence_length=16,
            output_type="latent",
            generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        )
    finally:
        hook.remove()
    assert torch.isfinite(out.images).all()
    assert guidance == [None] * 4  # 1 + 1 + 2 steps, no guidance embedding
