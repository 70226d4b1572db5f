"""ralu tune from Python: which recipe keeps quality at 3x fewer FLOPs on flux-shapes, for its own prompts?

Runs offline on the CPU with `flux-shapes`, the small trained FLUX-architecture model that ships in ralu-bench.
For your model, load it as usual (FluxPipeline.from_pretrained(...)) and give your own prompts:

    ./dev python docs/examples/tune.py [OUT_FOLDER] [CANDIDATES] [PROMPTS]   (with PROMPTS, seeds 0 and 1 only)

The folder gets tuned-3x.yaml, report.md, pareto.png and tune.json; run it again and it resumes (nothing that was
scored is made again). The same search from the command line:

    ./dev ralu tune --model flux-shapes --prompt-set shapes --num-prompts 6 --seeds 0 1 2 --speedup 3 --out tuned
"""

from __future__ import annotations

import sys

import torch

import ralu_core
from ralu_bench.models import load_reference_pipeline, recommended_call
from ralu_bench.plugin import shapes_prompts


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "tuned-flux-shapes"
    candidates = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    pipe = load_reference_pipeline("flux-shapes")
    pipe.set_progress_bar_config(disable=True)
    call = recommended_call("flux-shapes")
    size = {"height": call.pop("height"), "width": call.pop("width")}
    call.pop("num_inference_steps", None)
    prompts = shapes_prompts(int(sys.argv[3]) if len(sys.argv) > 3 else 6)  # scene captions the model never saw
    result = ralu_core.tune(
        pipe,
        prompts,
        speedups=[3.0],
        seeds=[0, 1, 2] if len(sys.argv) <= 3 else [0, 1],
        out=out,
        call_kwargs=call,
        max_candidates=candidates,
        model_name="flux-shapes",
        **size,
    )
    for target in result.targets:
        chosen = target.chosen
        held = target.held_out[0].metrics
        print(f"{target.target:g}x: {chosen.candidate.label} ({chosen.speedup:.2f}x FLOPs)")
        print(f"  held-out PSNR {held['psnr'][0]:.1f} dB, SSIM {held['ssim'][0]:.3f}; note: {target.note or 'none'}")
    tuned = ralu_core.accelerate(pipe, f"{out}/tuned-3x.yaml")
    image = tuned(prompts[0], generator=torch.Generator().manual_seed(7), **call, **size).images[0]
    image.save(f"{out}/example.png")
    print(f"{out}/example.png")


if __name__ == "__main__":
    main()
