"""The checks of docs/compatibility.md that need a GPU: sequential CPU offload, and bitsandbytes 8-bit and 4-bit
(NF4) transformers, on the tiny FLUX and SD3 pipelines under each adapter's baseline, a RALU and a RAS recipe.

For each model:
- an offloaded pipeline: the baseline equals the plain offloaded pipeline, every recipe gives exactly the latents
  it gives without offloading, and the offload hooks and every parameter's place are left as they were;
- a bitsandbytes transformer (a tiny saved transformer loaded back with ``BitsAndBytesConfig``, as a user loads
  one): the baseline equals the plain quantized pipeline, every recipe runs to finite latents, and the quantized
  weights are left as they were.

One line per check (``ok``, ``FAILED``, or ``skipped`` and why: no CUDA, bitsandbytes not installed) and a JSON
report; the exit status is 1 where a check failed. Expected on a GPU machine with bitsandbytes: every line ``ok``.
``--offloads model`` runs the offload checks with model CPU offload instead, which also works without a GPU (the
CPU test of this script uses it).

    python benchmarks/gpu_user_stack.py --out gpu-bench/user-stack.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, assert_same_snapshot
from ralu_core.testing.offload import offload_snapshot
from ralu_core.testing.quantized import weights_of

MODELS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "flux": ("flux-baseline", ("ralu-flux-7x", "ras-flux"), {"max_sequence_length": 16}),
    "sd3": ("sd3-baseline", ("ralu-sd3-3x", "ras-sd3"), {"max_sequence_length": 8}),
}
HEIGHT, WIDTH, STEPS = 64, 96, 3


def tiny(model: str) -> Any:
    if model == "flux":
        from ralu_flux.testing import make_flux_pipeline

        pipe = make_flux_pipeline("tiny", seed=0)
    else:
        from ralu_sd3.testing import make_sd3_pipeline

        pipe = make_sd3_pipeline("sd3-tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe: Any, recipe: str | None, baseline: str, call: dict[str, Any]) -> torch.Tensor:
    """The two prompts' latents, a CPU generator each (so that every device draws the same noise)."""
    kwargs: dict[str, Any] = {"height": HEIGHT, "width": WIDTH, **call, "output_type": "latent"}
    if recipe is None or recipe == baseline:
        kwargs["num_inference_steps"] = STEPS
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    run = pipe if recipe is None else accelerate(pipe, recipe)
    return run(list(PROMPTS), generator=generators, **kwargs).images.float().cpu()  # type: ignore[no-any-return]


class Report:
    def __init__(self) -> None:
        self.lines: list[dict[str, str]] = []

    def add(self, check: str, status: str, detail: str = "") -> None:
        self.lines.append({"check": check, "status": status, "detail": detail})
        print(f"{status:8} {check}" + (f": {detail}" if detail else ""), flush=True)

    def run(self, check: str, body: Callable[[], str | None]) -> None:
        try:
            detail = body()
        except AssertionError as exc:
            self.add(check, "FAILED", str(exc) or "assertion failed")
        except Exception as exc:
            self.add(check, "FAILED", f"{type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
        else:
            self.add(check, "ok", detail or "")


def offload_checks(report: Report, model: str, kind: str, device: str) -> None:
    baseline, recipes, call = MODELS[model]
    reference = tiny(model).to(device)
    expected = {recipe: latents(reference, recipe, baseline, call) for recipe in (baseline, *recipes)}
    pipe = tiny(model)
    if kind == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_model_cpu_offload(device=device)
    plain = latents(pipe, None, baseline, call)
    before, hooks = offload_snapshot(pipe)
    places = {name: str(p.device) for name, p in pipe.transformer.named_parameters()}
    name = f"{model}, {kind} CPU offload"

    def baseline_is_plain() -> None:
        assert torch.equal(latents(pipe, baseline, baseline, call), plain), "the baseline differs from the pipeline"

    report.run(f"{name}: {baseline} equals the plain offloaded pipeline", baseline_is_plain)
    for recipe, want in expected.items():

        def same(recipe: str = recipe, want: torch.Tensor = want) -> str:
            got = latents(pipe, recipe, baseline, call)
            gap = float((got - want).abs().max())
            assert gap == 0.0, f"differs from the pipeline without offload by {gap:.3g}"
            return "exactly the latents without offload"

        report.run(f"{name}: {recipe}", same)

    def kept() -> None:
        after, hooks_after = offload_snapshot(pipe)
        assert_same_snapshot(before, after, name)
        assert hooks == hooks_after, f"hooks {hooks} became {hooks_after}"
        now = {n: str(p.device) for n, p in pipe.transformer.named_parameters()}
        assert places == now, "a parameter moved"

    report.run(f"{name}: offload hooks and parameter places kept", kept)


def bitsandbytes_transformer(pipe: Any, bits: int) -> Any:
    """The pipeline's transformer saved and loaded back in 8-bit or 4-bit (NF4) with diffusers' BitsAndBytesConfig."""
    import diffusers

    config = (
        diffusers.BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
        if bits == 8
        else diffusers.BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    )
    with tempfile.TemporaryDirectory(prefix="ralu-bnb-") as folder:
        pipe.transformer.save_pretrained(folder)
        return type(pipe.transformer).from_pretrained(folder, quantization_config=config, torch_dtype=torch.float32)


def bitsandbytes_checks(report: Report, model: str, bits: int, device: str) -> None:
    baseline, recipes, call = MODELS[model]
    pipe = tiny(model)
    pipe.transformer = bitsandbytes_transformer(pipe, bits)
    pipe.to(device)
    name = f"{model}, bitsandbytes {'8-bit' if bits == 8 else '4-bit NF4'}"
    before = weights_of(pipe.transformer)

    def baseline_is_plain() -> None:
        ours, plain = latents(pipe, baseline, baseline, call), latents(pipe, None, baseline, call)
        assert torch.equal(ours, plain), f"differs from the plain quantized pipeline by {(ours - plain).abs().max()}"

    report.run(f"{name}: {baseline} equals the plain quantized pipeline", baseline_is_plain)
    for recipe in recipes:

        def runs(recipe: str = recipe) -> str:
            out = latents(pipe, recipe, baseline, call)
            assert torch.isfinite(out).all(), "latents not finite"
            return f"finite latents, max |x| {float(out.abs().max()):.3g}"

        report.run(f"{name}: {recipe}", runs)

    def kept() -> None:
        after = weights_of(pipe.transformer)
        same = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert same, "weights changed"

    report.run(f"{name}: quantized weights kept", kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--offloads", nargs="+", default=["sequential"], choices=["sequential", "model"])
    args = parser.parse_args(argv)
    report = Report()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    for model in args.models:
        for kind in args.offloads:
            if kind == "sequential" and not cuda:
                report.add(f"{model}, sequential CPU offload", "skipped", "no CUDA device (accelerate fails on CPU)")
            else:
                offload_checks(report, model, kind, device)
        for bits in (8, 4):
            check = f"{model}, bitsandbytes {bits}-bit"
            if not cuda:
                report.add(check, "skipped", "no CUDA device")
            elif importlib.util.find_spec("bitsandbytes") is None:
                report.add(check, "skipped", "bitsandbytes not installed")
            else:
                bitsandbytes_checks(report, model, bits, device)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "checks": report.lines}, indent=2))
    return 1 if any(line["status"] == "FAILED" for line in report.lines) else 0


if __name__ == "__main__":
    sys.exit(main())
