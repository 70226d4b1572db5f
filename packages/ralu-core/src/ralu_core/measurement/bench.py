"""``ralu bench``: recipes side by side on a prompt set, timed and scored.

Every recipe runs every (prompt, seed) in one process, interleaved (recipe order rotates per
sample) after a warm-up, so drift of the machine affects all recipes alike. The first recipe is the
baseline: speed-ups and paired metrics are relative to it. Quality metrics come from plugins
(``ralu_register_image_metrics``); FLOPs are counted on the meta device for exactly the work timed.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import torch

from ralu_core.measurement.accounting import recipe_cost
from ralu_core.measurement.host_sync import HostSyncRecorder
from ralu_core.measurement.paired import json_safe
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.accelerated import AcceleratedPipeline
from ralu_core.pipelines.compiling import graphs_compiled
from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.plugins.image_metric import Image, ImageMetric
from ralu_core.sampling.events import StageEvent


@attrs.frozen(kw_only=True)
class Sample:
    recipe: str
    prompt: str
    seed: int
    seconds: float
    image: Image | None
    scores: dict[str, float] = attrs.field(factory=dict)
    """Metric name -> value for this image (a metric that declined is absent)."""


@attrs.define
class BenchResult:
    """Everything measured; `to_dict` is the JSON report."""

    settings: dict[str, Any]
    recipes: list[str]
    samples: list[Sample]
    flops: dict[str, dict[str, float]]
    notes: list[str]
    reuse: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    """Recipe -> (reused, total) evaluations measured by its adaptive caches over the timed samples."""
    token_cache_bytes: dict[str, int] = attrs.field(factory=dict)
    """Recipe -> the most memory its token-level caches held (RAS's keys, values and reused outputs)."""
    graphs: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    """With ``torch.compile``: recipe -> (graphs compiled during its warm-up, during its timed samples)."""
    peak_memory_bytes: dict[str, int] = attrs.field(factory=dict)
    """On a GPU: recipe -> the most device memory any of its calls allocated (weights included)."""
    host_syncs: dict[str, list[str]] = attrs.field(factory=dict)
    """Recipe -> where one call's sampling loop made the host wait for the device (``count  site: op``)."""

    def reused_share(self, recipe: str) -> float | None:
        reused, total = self.reuse.get(recipe, (0, 0))
        return reused / total if total else None

    @property
    def scores(self) -> dict[str, dict[str, list[float]]]:
        """Recipe -> metric -> the values of its samples, in sample order."""
        table: dict[str, dict[str, list[float]]] = {}
        for sample in self.samples:
            per_recipe = table.setdefault(sample.recipe, {})
            for metric, value in sample.scores.items():
                per_recipe.setdefault(metric, []).append(value)
        return table

    def median_seconds(self, recipe: str) -> float:
        return statistics.median(s.seconds for s in self.samples if s.recipe == recipe)

    def summary(self) -> list[dict[str, Any]]:
        base = self.recipes[0]
        rows = []
        for recipe in self.recipes:
            row: dict[str, Any] = {
                "recipe": recipe,
                "seconds_per_image": self.median_seconds(recipe),
                "speedup_wall": self.median_seconds(base) / self.median_seconds(recipe),
                **self.flops[recipe],
                "speedup_flops_all": self.flops[base]["tflops_all"] / self.flops[recipe]["tflops_all"],
                "speedup_flops_linear": self.flops[base]["tflops_linear"] / self.flops[recipe]["tflops_linear"],
            }
            row["efficiency"] = row["speedup_wall"] / row["speedup_flops_all"]
            row["reused_share"] = self.reused_share(recipe)
            row["token_cache_mib"] = self.token_cache_bytes.get(recipe, 0) / 2**20
            peak = self.peak_memory_bytes.get(recipe)
            row["peak_memory_gib"] = None if peak is None else peak / 2**30
            warmup_graphs, timed_graphs = self.graphs.get(recipe, (None, None))
            row["graphs_compiled_warmup"], row["graphs_compiled_timed"] = warmup_graphs, timed_graphs
            for metric, values in self.scores.get(recipe, {}).items():
                finite = [v for v in values if math.isfinite(v)]
                row[metric] = statistics.fmean(finite) if finite else (math.inf if values else None)
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "summary": self.summary(),
            "samples": [
                {"recipe": s.recipe, "prompt": s.prompt, "seed": s.seed, "seconds": s.seconds, "scores": s.scores}
                for s in self.samples
            ],
            "scores": self.scores,
            "reuse": {recipe: {"reused": r, "evaluations": t} for recipe, (r, t) in self.reuse.items()},
            "token_cache_bytes": self.token_cache_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "graphs_compiled": {recipe: {"warmup": w, "timed": t} for recipe, (w, t) in self.graphs.items()},
            "host_syncs": self.host_syncs,
            "notes": self.notes,
        }


def to_uint8(image: Any) -> Image:
    """A pipeline's numpy image in [0, 1] -> (H, W, 3) uint8."""
    array = np.asarray(image, dtype=np.float32)
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


@attrs.frozen(kw_only=True)
class BenchPlan:
    recipes: Sequence[AcceleratedPipeline]
    prompts: Sequence[str]
    seeds: Sequence[int]
    call_kwargs: dict[str, Any]
    steps: int
    warmup: int = 1
    decode: bool = True
    compiled: bool = False
    """Whether the denoiser's blocks are compiled: graphs compiled are then counted per recipe."""
    host_syncs: bool = False
    """After the timed samples, run one more call per recipe, eager, recording its host-device syncs."""

    def step_kwargs(self, fast: AcceleratedPipeline) -> dict[str, Any]:
        """--steps reaches single-stage recipes that leave their steps open, not one that fixes them."""
        open_steps = fast.runtime.schedule.accepts_requested_steps and fast.runtime.stages[0].spec.steps is None
        return {"num_inference_steps": self.steps} if open_steps else {}


class BenchProgress(Protocol):
    """Told about the two phases of a bench run, so that a progress display can keep them apart."""

    def warmup(self, done: int, total: int) -> Any: ...

    def sample(self, done: int, total: int) -> Any: ...


def run_bench(
    plan: BenchPlan,
    metrics: Sequence[ImageMetric],
    profile: FlopsProfile,
    progress: BenchProgress | None = None,
) -> BenchResult:
    """Run `plan`, score the images with `metrics`, count FLOPs on `profile`."""
    height, width = plan.call_kwargs["height"], plan.call_kwargs["width"]
    output_type = "np" if plan.decode else "latent"

    cuda = torch.cuda.is_available()
    peak: dict[str, int] = {}
    graphs: dict[str, list[int]] = {}

    def call(fast: AcceleratedPipeline, prompt: str, seed: int, phase: int) -> tuple[float, Image | None]:
        extra = plan.step_kwargs(fast)
        generator = torch.Generator("cpu").manual_seed(seed)
        compiled_before = graphs_compiled()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fast(prompt=prompt, generator=generator, output_type=output_type, **plan.call_kwargs, **extra).images
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        name = fast.recipe.name
        if cuda:
            peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
        graphs.setdefault(name, [0, 0])[phase] += graphs_compiled() - compiled_before
        return seconds, to_uint8(out[0]) if plan.decode else None

    warmups = len(plan.recipes) * plan.warmup
    total = len(plan.recipes) * len(plan.prompts) * len(plan.seeds)
    done = 0
    for fast in plan.recipes:
        for _ in range(plan.warmup):
            call(fast, plan.prompts[0], plan.seeds[0], WARMUP)
            done += 1
            if progress is not None:
                progress.warmup(done, warmups)
    samples: list[Sample] = []
    reuse: dict[str, tuple[int, int]] = {}
    memory = TokenCacheMemory()
    managers = list({id(fast.plugin_manager): fast.plugin_manager for fast in plan.recipes}.values())
    for manager in managers:
        manager.register(memory)
    try:
        for count, (fast, prompt, seed) in enumerate(interleaved(plan), start=1):
            memory.recipe = fast.recipe.name
            seconds, image = call(fast, prompt, seed, TIMED)
            measured = [m for m in (c.cache.measured_reuse() for c in fast.runtime.caches) if m is not None]
            if measured:
                reused, evaluated = reuse.get(fast.recipe.name, (0, 0))
                reuse[fast.recipe.name] = (
                    reused + sum(m[0] for m in measured),
                    evaluated + sum(m[1] for m in measured),
                )
            samples.append(Sample(recipe=fast.recipe.name, prompt=prompt, seed=seed, seconds=seconds, image=image))
            if progress is not None:
                progress.sample(count, total)
    finally:
        for manager in managers:
            manager.unregister(memory)
    names = [fast.recipe.name for fast in plan.recipes]
    host_syncs = {fast.recipe.name: loop_syncs(plan, fast) for fast in plan.recipes} if plan.host_syncs else {}
    if plan.decode:
        samples = score_samples(samples, names[0], metrics)
    notes = [m.note() for m in metrics if m.note()]
    if not plan.decode:
        notes.append("quality metrics skipped: --no-decode produces no images")
    flops: dict[str, dict[str, float]] = {}
    for fast in plan.recipes:
        cost = recipe_cost(fast.runtime, profile, height, width, steps=plan.steps, baseline_steps=plan.steps)
        timed = cost.total if plan.decode else cost.total_without_final_decode
        flops[fast.recipe.name] = {"tflops_all": timed.tflops(True), "tflops_linear": timed.tflops(False)}
        if cost.adaptive_caches:
            notes.append(adaptive_cache_note(fast, cost.adaptive_caches))
    settings = {
        "height": height,
        "width": width,
        "steps": plan.steps,
        "prompts": list(plan.prompts),
        "seeds": list(plan.seeds),
        "warmup": plan.warmup,
        "final_decode_timed": plan.decode,
        "compiled": plan.compiled,
        "call_args": {k: v for k, v in plan.call_kwargs.items() if k not in ("height", "width")},
    }
    return BenchResult(
        settings=settings,
        recipes=names,
        samples=samples,
        flops=flops,
        notes=notes,
        reuse=reuse,
        token_cache_bytes={name: memory.most.get(name, 0) for name in names},
        graphs={name: (graphs[name][WARMUP], graphs[name][TIMED]) for name in names} if plan.compiled else {},
        peak_memory_bytes=peak,
        host_syncs=host_syncs,
    )


def loop_syncs(plan: BenchPlan, fast: AcceleratedPipeline) -> list[str]:
    """Where one call of `fast` (eager, untimed) made the host wait for the device inside its sampling loop."""
    generator = torch.Generator("cpu").manual_seed(plan.seeds[0])
    output_type = "np" if plan.decode else "latent"
    with torch.compiler.set_stance("force_eager"), HostSyncRecorder.step_loop() as recorder:
        fast(
            prompt=plan.prompts[0],
            generator=generator,
            output_type=output_type,
            **plan.call_kwargs,
            **plan.step_kwargs(fast),
        )
    return [f"{count}  {record}" for record, count in recorder.summary().items()]


WARMUP, TIMED = 0, 1
"""The two phases of a bench run (indices of the per-recipe graph counts)."""


class TokenCacheMemory:
    """Observer plugin: per recipe, the most memory token-level caches held at the end of any stage."""

    def __init__(self) -> None:
        self.recipe = ""
        self.most: dict[str, int] = {}

    @hookimpl
    def ralu_on_stage_end(self, event: StageEvent) -> None:
        self.most[self.recipe] = max(self.most.get(self.recipe, 0), event.token_cache_bytes)


def interleaved(plan: BenchPlan) -> Iterator[tuple[AcceleratedPipeline, str, int]]:
    """Every (recipe, prompt, seed), recipes taking turns and each sample rotating who runs first, so that
    drifts of the machine spread over all recipes alike."""
    for p_index, prompt in enumerate(plan.prompts):
        for s_index, seed in enumerate(plan.seeds):
            offset = (p_index * len(plan.seeds) + s_index) % len(plan.recipes)
            order = list(range(len(plan.recipes)))
            for index in order[offset:] + order[:offset]:
                yield plan.recipes[index], prompt, seed


def score_samples(samples: Sequence[Sample], baseline: str, metrics: Sequence[ImageMetric]) -> list[Sample]:
    """The samples with their scores; paired metrics compare with the baseline's image of the same
    prompt and seed (and skip the baseline itself)."""
    references = {(s.prompt, s.seed): s.image for s in samples if s.recipe == baseline}
    scored = []
    for sample in samples:
        assert sample.image is not None
        values: dict[str, float] = {}
        for metric in metrics:
            reference = references.get((sample.prompt, sample.seed)) if metric.paired else None
            if metric.paired and (reference is None or sample.recipe == baseline):
                continue
            value = metric.score(sample.image, reference, sample.prompt)
            if value is not None:
                values[metric.name] = float(value)
        scored.append(attrs.evolve(sample, scores=values))
    return scored


def adaptive_cache_note(fast: AcceleratedPipeline, adaptive: Sequence[str]) -> str:
    """What the FLOPs of a recipe with adaptive caches mean, and where their savings show: the `reused` column
    for caches that count what they reuse, only the wall-clock for those that do not (diffusers' own hooks)."""
    unmeasured = {c.cache.name for c in fast.runtime.caches if c.cache.measured_reuse() is None}
    counted = [name for name in adaptive if name not in unmeasured]
    hidden = [name for name in adaptive if name in unmeasured]
    parts = [f"{fast.recipe.name}: adaptive cache(s) {', '.join(adaptive)} counted as full in FLOPs"]
    if counted:
        parts.append(f"`reused` is the measured share of evaluations that {', '.join(counted)} reused")
    if hidden:
        parts.append(
            f"what {', '.join(hidden)} skips is decided inside diffusers and not counted, so only the wall-clock "
            "shows it"
        )
    return "; ".join(parts)


# --- outputs ------------------------------------------------------------------------------------


def markdown_table(result: BenchResult, device: str) -> str:
    rows = result.summary()
    metric_names = sorted({k for r in rows for k in result.scores.get(r["recipe"], {})})
    reuse_column = ["reused"] if result.reuse else []
    memory_column = ["token cache MiB"] if any(result.token_cache_bytes.values()) else []
    peak_column = ["peak GiB"] if result.peak_memory_bytes else []
    graph_column = ["graphs compiled (warm-up / timed)"] if result.graphs else []
    header = ["recipe", "s / image", "wall x", "FLOPs x (all)", "FLOPs x (linear)", "wall / FLOPs", *reuse_column]
    header += memory_column + peak_column + graph_column
    header += metric_names
    settings = result.settings
    decode = "included" if settings["final_decode_timed"] else "excluded"
    compiled = f"; torch.compile {settings['compile']}" if settings.get("compiled") else ""
    lines = [
        f"{device}; {settings['height']}x{settings['width']}, baseline steps {settings['steps']}, "
        f"{len(settings['prompts'])} prompts x {len(settings['seeds'])} seeds, median time per image "
        f"(interleaved, after warm-up); final decode {decode}{compiled}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else str(value)

    for row in rows:
        cells = [
            row["recipe"],
            fmt(row["seconds_per_image"]),
            f"{row['speedup_wall']:.2f}x",
            f"{row['speedup_flops_all']:.2f}x",
            f"{row['speedup_flops_linear']:.2f}x",
            f"{row['efficiency']:.2f}",
            *([fmt(row["reused_share"])] if reuse_column else []),
            *([f"{row['token_cache_mib']:.1f}"] if memory_column else []),
            *([fmt(row["peak_memory_gib"])] if peak_column else []),
            *([f"{row['graphs_compiled_warmup']} / {row['graphs_compiled_timed']}"] if graph_column else []),
            *[fmt(row.get(m)) for m in metric_names],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in result.notes]]
    if result.host_syncs:
        lines += ["", "Host-device synchronisations in the sampling loop (one eager call each; count, site, op):", ""]
        for recipe, syncs in result.host_syncs.items():
            lines.append(f"- {recipe}: {'none' if not syncs else ''}")
            lines += [f"    - {sync}" for sync in syncs]
    return "\n".join(lines) + "\n"


def image_grid(result: BenchResult, path: Path, max_prompts: int = 8) -> None:
    """PNG grid: one row per (prompt, first seed), labelled with its prompt, one column per recipe, each
    column headed by its name."""
    from PIL import Image as PILImage

    seed = result.settings["seeds"][0]
    prompts = result.settings["prompts"][:max_prompts]
    by_key = {(s.recipe, s.prompt, s.seed): s.image for s in result.samples}
    rows = []
    for prompt in prompts:
        tiles = [by_key[(recipe, prompt, seed)] for recipe in result.recipes]
        present = [t for t in tiles if t is not None]
        if len(present) != len(tiles):
            return
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in present], 1)
        rows.append(np.concatenate([row_label(prompt, LABEL_WIDTH, row.shape[0]), row], 1))
    widths = [LABEL_WIDTH] + [tile.shape[1] + 4 for tile in present]
    header = column_header(["", *result.recipes], widths)
    PILImage.fromarray(np.concatenate([header, *rows], 0)).save(path)


LABEL_WIDTH = 160
"""Pixels of the grid's left column, where each row's prompt is written."""


def row_label(text: str, width: int, height: int) -> Image:
    """A white cell with `text` wrapped to its width (cut with an ellipsis if it does not fit)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    cell = PILImage.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(cell)
    font = ImageFont.load_default()
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width - 8:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    line_height = 12
    fitting = max(1, (height - 8) // line_height)
    if len(lines) > fitting:
        lines = [*lines[: fitting - 1], lines[fitting - 1] + " \u2026"]
    for index, line in enumerate(lines):
        draw.text((4, 4 + index * line_height), line, fill=(0, 0, 0), font=font)
    return np.asarray(cell)


def column_header(names: Sequence[str], widths: Sequence[int], height: int = 18) -> Image:
    """A white strip with each name centred over its column; a name too wide for it is cut short
    with an ellipsis."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    strip = PILImage.new("RGB", (sum(widths), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    left = 0
    for name, width in zip(names, widths, strict=True):
        text = name
        while len(text) > 1 and draw.textlength(text, font=font) > width - 4:
            text = text[:-2] + "\u2026"
        draw.text((left + width / 2, height / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
        left += width
    return np.asarray(strip)


def speed_quality_plot(result: BenchResult, path: Path, metric: str) -> str:
    """PNG scatter of wall-clock speed-up against a quality metric; returns a note if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "speed/quality plot skipped: matplotlib is not installed"
    rows = [r for r in result.summary() if r.get(metric) is not None and math.isfinite(r[metric])]
    if not rows:
        return f"speed/quality plot skipped: no finite {metric} values"
    figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
    for row in rows:
        axes.scatter(row["speedup_wall"], row[metric])
        axes.annotate(
            row["recipe"], (row["speedup_wall"], row[metric]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    axes.set_xlabel("wall-clock speed-up over the baseline")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return ""


def write_outputs(result: BenchResult, out_dir: Path, device: str, plot_metric: str | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    if result.settings["final_decode_timed"]:
        image_grid(result, out_dir / "grid.png")
        paths.append(out_dir / "grid.png")
        if plot_metric is not None:
            note = speed_quality_plot(result, out_dir / "speed_quality.png", plot_metric)
            if note:
                result.notes.append(note)
            else:
                paths.append(out_dir / "speed_quality.png")
    report = json_safe(result.to_dict() | {"device": device})
    paths[0].write_text(json.dumps(report, indent=2, default=float, allow_nan=False))
    paths[1].write_text(markdown_table(result, device))
    return paths
