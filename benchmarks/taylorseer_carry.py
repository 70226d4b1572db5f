"""Should TaylorSeer's series carry over a RALU stage change through the TokenMap, or start again? Measured.

Runs RALU 5x without a cache on `flux-shapes` and records, at every step of its mixed (1) and full-resolution
(2) stages, the outputs TaylorSeer forecasts in FLUX's blocks (image tokens of the double-stream feed-forwards
and of the single-stream output projections), and the TokenMap between the two stages' tokens. It then
compares, against the computed features, the first-order forecasts each policy would use in stage 2:

* reset (ours): stage 2 starts with 3 full steps (W = 3); steps 3 and 4 are forecast from steps 1 and 2;
* carry: stage 2 computes its first step only; steps 1 and 2 are forecast from it with the derivative of
  stage 1's last two steps, each new token taking its parent token's (the TokenMap);
* reuse: the same compute without carrying: steps 1 and 2 reuse step 0's features (order 0).

Carrying saves two full steps per stage. Printed: the relative L2 error of each forecast (median over
prompts and modules). A carried forecast must be about as good as the reset one to be worth having.

    ./dev python benchmarks/taylorseer_carry.py --num-prompts 8
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

import ralu_core
from ralu_bench.models import load_reference_pipeline, recommended_call
from ralu_bench.plugin import shapes_prompts
from ralu_core.sampling.engine import SamplingEngine
from ralu_core.sampling.token_map import TokenMap


def _watched(transformer: Any) -> dict[str, torch.nn.Module]:
    modules = {f"double {i} ff": b.ff for i, b in enumerate(transformer.transformer_blocks)}
    modules |= {f"single {i} proj_out": b.proj_out for i, b in enumerate(transformer.single_transformer_blocks)}
    return modules


def _record(pipe: Any, prompt: str, call: dict[str, Any]) -> tuple[dict[str, list[torch.Tensor]], list[TokenMap]]:
    """Each watched module's outputs in call order, and the token maps of the stage changes."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in _watched(pipe.transformer)}
    maps: list[TokenMap] = []
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out.detach().clone()))
        for name, module in _watched(pipe.transformer).items()
    ]
    original = SamplingEngine._transition

    def transition(self: SamplingEngine, *args: Any, **kwargs: Any) -> Any:
        new = original(self, *args, **kwargs)
        maps.append(TokenMap.between(args[3], new))
        return new

    SamplingEngine._transition = transition  # type: ignore[method-assign]
    try:
        ralu_core.accelerate(pipe, "ralu-flux-5x")(prompt, generator=torch.Generator().manual_seed(0), **call)
    finally:
        SamplingEngine._transition = original  # type: ignore[method-assign]
        for handle in handles:
            handle.remove()
    return outputs, maps


def _relative(forecast: torch.Tensor, truth: torch.Tensor) -> float:
    return float((forecast - truth).norm() / truth.norm().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=8)
    args = parser.parse_args()
    pipe = load_reference_pipeline("flux-shapes")
    pipe.set_progress_bar_config(disable=True)
    call = {k: v for k, v in recommended_call("flux-shapes").items() if k != "num_inference_steps"}
    steps = (4, 5, 6)  # RALU 5x's stages
    names = (
        "reset, step 3",
        "reset, step 4",
        "carry, step 1",
        "carry, step 2",
        "reuse, step 1",
        "reuse, step 2",
        "check: carried features",
        "check: shuffled",
    )
    errors: dict[str, list[float]] = {name: [] for name in names}
    for prompt in shapes_prompts(args.num_prompts):
        outputs, maps = _record(pipe, prompt, call)
        token_map = maps[1]  # stage 1 -> stage 2
        image = token_map.parent.shape[1]
        for series in outputs.values():
            branches = len(series) // sum(steps)
            # Branch 0 of every step; each step's evaluations are consecutive.
            per_step = [series[i * branches] for i in range(sum(steps))]
            old_tokens = int(token_map.parent.max()) + 1
            mixed = [f[:, -old_tokens:] for f in per_step[4:9]]  # image tokens are last in every module's rows
            full = [f[:, -image:] for f in per_step[9:15]]
            slope = token_map.carry(mixed[4] - mixed[3])
            for k in (1, 2):
                errors[f"carry, step {k}"].append(_relative(full[0] + slope * k, full[k]))
                errors[f"reuse, step {k}"].append(_relative(full[0], full[k]))
            for k in (3, 4):
                errors[f"reset, step {k}"].append(_relative(full[2] + (full[2] - full[1]) * (k - 2), full[k]))
            # The map is right if stage 1's last features, carried, are closer to stage 2's first than shuffled.
            carried = token_map.carry(mixed[4])
            errors["check: carried features"].append(_relative(carried, full[0]))
            errors["check: shuffled"].append(_relative(carried[:, torch.randperm(image)], full[0]))
    for name, values in errors.items():
        print(f"{name}: relative error, median {statistics.median(values):.3f}, mean {statistics.fmean(values):.3f}")


if __name__ == "__main__":
    main()
