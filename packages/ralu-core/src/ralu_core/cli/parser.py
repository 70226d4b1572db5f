"""The ``ralu`` command line's parser: it imports neither torch nor any model library, so ``ralu --help`` and
a mistyped option answer at once. Each command runs from its own module of `ralu_core.cli`, imported after
the arguments parse."""

from __future__ import annotations

import argparse

from ralu_core.pipelines.compiling import COMPILE_MODES

DTYPE_NAMES = ("bfloat16", "float16", "float32")


def prompt_options(p: argparse.ArgumentParser) -> None:
    """Prompts given one by one, or from a registered prompt set (`bench` and `tune`)."""
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-set", help="a registered prompt set (e.g. shapes, from ralu-bench)")
    p.add_argument("--num-prompts", type=int, default=8, help="prompts taken from --prompt-set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu", description="Training-free acceleration of diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            help="named model (see `ralu plugins`: flux-shapes, flux-tiny ...), local folder or hub id; "
            "default: the recipe's default model",
        )
        p.add_argument("--height", type=int)
        p.add_argument("--width", type=int)
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda where available, else cpu)")
        p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
        p.add_argument(
            "--threads",
            type=int,
            help="CPU threads PyTorch uses (default: one per core); on a busy machine fewer, even 1, can be many "
            "times faster",
        )
        p.add_argument(
            "--call-arg",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra pipeline argument, e.g. max_sequence_length=128 (repeatable)",
        )

    gen = sub.add_parser("generate", help="generate images with a recipe")
    gen.add_argument("prompt", nargs="?", help="the prompt (or --prompts FILE for many)")
    gen.add_argument(
        "--prompts", help="a file of prompts (one per line, or .jsonl): one image per prompt and seed into --out DIR"
    )
    gen.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --prompts: the seeds of every prompt")
    gen.add_argument("--batch-size", type=int, default=1, help="with --prompts: images per pipeline call")
    gen.add_argument(
        "--recipe",
        help="built-in name or YAML path (default: the recipe the model's adapter recommends, ralu-flux-7x for FLUX)",
    )
    model_options(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--steps", type=int, help="num_inference_steps (single-stage recipes only)")
    gen.add_argument("--guidance", type=float, help="guidance_scale")
    gen.add_argument(
        "--out",
        help="output PNG path (several images get -0, -1 ... suffixes; default: a new file in ralu-out/ named after "
        "the prompt, recipe and seed); with --prompts, a folder",
    )
    gen.add_argument(
        "--save-selection",
        action="store_true",
        help="also write IMAGE-selection.png: per stage, the cells computed at full resolution (what the recipe's "
        "selectors chose) over the image",
    )

    rec = sub.add_parser("recipes", help="list, show or validate recipes")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    rec_sub.add_parser("list", help="built-in recipes")
    rec_sub.add_parser("show", help="print a recipe's YAML").add_argument("target", metavar="NAME")
    rec_sub.add_parser("validate", help="check a recipe file").add_argument("target", metavar="FILE")

    sub.add_parser("plugins", help="installed plugins and what they register")

    sch = sub.add_parser(
        "schedule", help="the schedule a recipe runs (--recipe), or NT-DM solved for a stage plan (--steps, --ends)"
    )
    sch.add_argument("--recipe", help="built-in name or YAML path: show the schedule it will run")
    sch.add_argument("--steps", type=int, nargs="+", help="steps per stage of a plan to solve")
    sch.add_argument("--ends", type=float, nargs="+", help="stage ends in t (0 noise, 1 data), the last 1.0")
    sch.add_argument("--base-shift", type=float, help="the model's base shift h0 (default: the recipe's, else 3.0)")
    sch.add_argument("--json", action="store_true")

    flo = sub.add_parser("flops", help="count a recipe's FLOPs on a full-size architecture (meta device)")
    flo.add_argument(
        "--model",
        help="architecture (flux-dev, sd3-medium ...), pipeline folder or named model (flux-shapes); default: the "
        "first architecture of the recipe's model family",
    )
    flo.add_argument("--recipe", required=True)
    flo.add_argument("--height", type=int, default=1024)
    flo.add_argument("--width", type=int, default=1024)
    flo.add_argument("--steps", type=int, help="steps of single-stage recipes (default: the baseline's)")
    flo.add_argument("--baseline-steps", type=int, help="steps of the reference sampler (flux-dev: 50)")
    flo.add_argument(
        "--against",
        metavar="ARCHITECTURE",
        help="also quote the speed-up against another architecture's sampler (a distilled model against the model it "
        "was distilled from, as the RALU paper does: flux-schnell against flux-dev)",
    )
    flo.add_argument("--against-steps", type=int, help="steps of --against's sampler (default: its baseline's)")
    flo.add_argument(
        "--against-cfg",
        choices=["on", "off"],
        default="on",
        help="off: count --against's sampler with one transformer pass per step where it runs a CFG batch of two "
        "(the RALU paper counts SD3.5-Large so)",
    )
    flo.add_argument(
        "--text-encoders",
        choices=["exclude", "include"],
        default="exclude",
        help="include: count the text encoders' passes once per image, in the recipe and every baseline (the RALU "
        "paper's convention); exclude (default): they are the same for every recipe",
    )
    flo.add_argument(
        "--attention",
        choices=["exclude", "include"],
        default="exclude",
        help="exclude: the RALU paper's convention (default); include: count attention too",
    )
    flo.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="run recipes side by side on a prompt set: speed, FLOPs and quality")
    bench.add_argument(
        "--recipes",
        nargs="+",
        help="the first one is the baseline of every ratio and paired metric (default: the model adapter's "
        "baseline and recommended recipe, flux-baseline and ralu-flux-7x for FLUX)",
    )
    model_options(bench)
    prompt_options(bench)
    bench.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per prompt")
    bench.add_argument("--steps", type=int, default=50, help="steps of single-stage recipes (default 50)")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument(
        "--compile",
        choices=["off", *COMPILE_MODES],
        default="off",
        help="torch.compile the denoiser's repeated blocks (static shapes: one graph per stage shape), compiled "
        "during the warm-up; the report counts the graphs compiled per recipe",
    )
    bench.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (default inductor; eager: no codegen)"
    )
    bench.add_argument(
        "--host-syncs",
        action="store_true",
        help="after timing, record where one call per recipe makes the host wait for the device in its sampling "
        "loop (docs/gpu.md)",
    )
    bench.add_argument(
        "--no-decode",
        dest="decode",
        action="store_false",
        help="time sampling only (latent output, no quality metrics); FLOPs exclude the final decode",
    )
    bench.add_argument(
        "--out", default="ralu-bench-report", help="folder for report.json, report.md, grid.png, speed_quality.png"
    )

    tune = sub.add_parser(
        "tune",
        help="search the registered strategies for the fastest recipe that keeps quality on your model and prompts",
    )
    model_options(tune)
    prompt_options(tune)
    tune.add_argument("--prompts", help="a file of prompts (one per line, or .jsonl)")
    tune.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per prompt; the last third are held out"
    )
    tune.add_argument(
        "--speedup",
        type=float,
        nargs="+",
        required=True,
        help="FLOPs speed-ups over the model's own sampler to tune for (e.g. 3 5), each within ± 5 %%",
    )
    tune.add_argument("--out", required=True, help="folder for tuned-<N>x.yaml, report.md, pareto.png, tune.json")
    tune.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME[:WEIGHT]",
        help="an image metric and its weight in the score (repeatable); default: every registered one that can run",
    )
    tune.add_argument("--max-candidates", type=int, default=36, help="candidates scored per speed-up (the first round)")
    tune.add_argument("--max-minutes", type=float, help="time budget: later rounds stop early and keep the best so far")

    cmp = sub.add_parser(
        "compare", help="two recipes of a bench report, prompt by prompt: who scores higher, and a sign test"
    )
    cmp.add_argument("report", help="report.json of `ralu bench` (or the folder holding it)")
    cmp.add_argument("first", metavar="A", help="a recipe in the report")
    cmp.add_argument("second", metavar="B", help="another recipe in the report")
    cmp.add_argument("--metric", action="append", default=[], help="only this metric (repeatable); default: all")
    cmp.add_argument(
        "--second-report", help="read B from this report instead (another run on the same prompts and seeds)"
    )
    cmp.add_argument("--json", action="store_true")
    return parser
