"""What a tune leaves in its folder: one recipe per speed-up (``tuned-5x.yaml``), ``report.md`` (every candidate
scored: FLOPs, scores, the round it was dropped at), ``pareto.png`` (FLOPs speed-up against the selection score,
the built-in recipes marked) and ``tune.json``. Every file is written atomically."""

from __future__ import annotations

import datetime
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ralu_core.files import write_atomically
from ralu_core.measurement.paired import json_safe
from ralu_core.recipes.loader import dump_recipe
from ralu_core.tuning.scoring import SCORE
from ralu_core.tuning.search import Evaluated, HeldOut, TargetResult, TuneResult
from ralu_core.tuning.space import BUILTIN


def recipe_name(target: float) -> str:
    return f"tuned-{target:g}x"


def _spread(metrics: dict[str, tuple[float, float]], identical: dict[str, int] | None = None) -> str:
    """``psnr 31.2 ± 2.1 (2 identical: infinite, left out of the mean)``: a metric's infinite values are counted,
    not averaged."""
    identical = identical or {}
    shown = []
    for name in sorted(set(metrics) | set(identical)):
        mean, std = metrics.get(name, (math.nan, math.nan))
        text = f"{name} {mean:.4g} ± {std:.2g}" if name in metrics else f"{name} -"
        if identical.get(name):
            text += f" ({identical[name]} identical to the baseline: infinite, left out of the mean)"
        shown.append(text)
    return ", ".join(shown)


def tuned_recipe_text(result: TuneResult, target: TargetResult, today: str) -> str:
    """The recommended recipe as YAML, headed by how it was chosen and what it scored on held-out samples."""
    settings = result.settings
    chosen = target.chosen
    recipe = attrs.evolve(
        chosen.candidate.recipe,
        name=recipe_name(target.target),
        description=f"ralu tune's {target.target:g}x for {settings.model}: {chosen.candidate.label}",
    )
    shown = [*settings.prompts[:8], *(["..."] if len(settings.prompts) > 8 else [])]
    header = [
        f"ralu tune, {today}: the best of {target.candidates} candidates at {target.target:g}x on {settings.model}",
        f"FLOPs: {chosen.speedup:.3f}x fewer than the model's sampler at {settings.steps} steps "
        f"({'attention included' if settings.include_attention else 'linear layers only'}), "
        f"{settings.width}x{settings.height}",
        f"chosen as: {chosen.candidate.family} ({chosen.candidate.label}), selection score "
        f"{target.selection_score:.4f} on {len(result.selection)} samples",
        f"held out ({len(result.held)} samples it was not chosen on): "
        f"{_spread(target.held_out[0].metrics, target.held_out[0].identical)}",
        f"prompts ({len(settings.prompts)}): {'; '.join(shown)}",
        f"seeds: {' '.join(map(str, settings.seeds))}; metrics: {' '.join(settings.metrics)}",
    ]
    if target.note:
        header.append(f"note: {target.note}")
    return "".join(f"# {line}\n" for line in header) + dump_recipe(recipe)


def _rounds(entry: Evaluated) -> str:
    return " → ".join(f"{score:.4f} ({samples})" for samples, score in entry.rounds)


def report_markdown(result: TuneResult, today: str) -> str:
    settings = result.settings
    lines = [
        f"# ralu tune: {settings.model}",
        "",
        f"{today}. {len(settings.prompts)} prompts, seeds {', '.join(map(str, settings.seeds))}, "
        f"{settings.width}x{settings.height}, against the model's sampler at {settings.steps} steps. Metrics: "
        f"{', '.join(settings.metrics)}. {len(result.costed)} candidates counted; {len(result.selection)} selection "
        f"and {len(result.held)} held-out samples; {result.images_made} images made in {result.seconds:.0f} s.",
        "",
        "## Recommended",
        "",
        "| speed-up | recipe | FLOPs | chosen as | selection score | held-out score | held-out metrics |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in result.targets:
        lines += [_held_row(target, held) for held in target.held_out]
    notes = [f"{t.target:g}x: {t.note}" for t in result.targets if t.note] + result.notes
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    for target in result.targets:
        entries = sorted(
            result.evaluated[target.target],
            key=lambda e: (e.dropped_at is not None, -(e.dropped_at or 0), -(e.last_score or 0.0), e.key),
        )
        lines += [
            "",
            f"## {target.target:g}x: every candidate scored",
            "",
            f"Rounds of successive halving: {' → '.join(map(str, target.rounds))} candidates.",
            "",
            "| key | family | candidate | FLOPs | scores (samples) | kept |",
            "|---|---|---|---|---|---|",
        ]
        for entry in entries:
            kept = "to the end" if entry.dropped_at is None else f"dropped after round {entry.dropped_at + 1}"
            c = entry.costed
            lines.append(
                f"| {c.candidate.key} | {c.candidate.family} | {c.candidate.label} | {c.speedup or 0:.3f}x | "
                f"{_rounds(entry)} | {kept} |"
            )
    return "\n".join(lines) + "\n"


def _held_row(target: TargetResult, entry: HeldOut) -> str:
    mean, std = entry.metrics.get(SCORE, (math.nan, math.nan))
    others = {k: v for k, v in entry.metrics.items() if k != SCORE}
    selection = "" if entry.selection_score is None else f"{entry.selection_score:.4f}"
    return (
        f"| {target.target:g}x | {entry.label} ({entry.key}) | {entry.speedup:.3f}x | {entry.family} | {selection} | "
        f"{mean:.4f} ± {std:.3f} | {_spread(others, entry.identical)} |"
    )


def tune_json(result: TuneResult) -> Any:
    return json_safe(
        {
            "settings": result.settings.to_json(),
            "selection": [[s.prompt, s.seed] for s in result.selection],
            "held_out": [[s.prompt, s.seed] for s in result.held],
            "targets": [
                {
                    "speedup": t.target,
                    "recipe": recipe_name(t.target),
                    "chosen": t.chosen.candidate.key,
                    "family": t.chosen.candidate.family,
                    "label": t.chosen.candidate.label,
                    "flops_speedup": t.chosen.speedup,
                    "selection_score": t.selection_score,
                    "first_round_score": t.first_score,
                    "note": t.note,
                    "rounds": list(t.rounds),
                    "held_out": [
                        {
                            "label": h.label,
                            "key": h.key,
                            "flops_speedup": h.speedup,
                            "metrics": h.metrics,
                            "identical": h.identical,
                            "samples": h.samples,
                        }
                        for h in t.held_out
                    ],
                    "candidates": [
                        {
                            "key": e.key,
                            "family": e.costed.candidate.family,
                            "label": e.costed.candidate.label,
                            "flops_speedup": e.costed.speedup,
                            "rounds": e.rounds,
                            "dropped_after_round": None if e.dropped_at is None else e.dropped_at + 1,
                        }
                        for e in result.evaluated[t.target]
                    ],
                }
                for t in result.targets
            ],
            "counted": len(result.costed),
            "notes": result.notes,
            "seconds": result.seconds,
            "images_made": result.images_made,
        }
    )


PLOT_SIZE = (640, 420)
MARGIN = 56


def pareto_png(result: TuneResult) -> bytes:
    """FLOPs speed-up (x) against the score on the first round's samples (y), which every scored candidate ran,
    so that all points rest on the same samples; built-in recipes as squares, recommendations as large rings.
    Drawn with PIL (no plotting library needed)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    points = [
        (e.costed.speedup or 0.0, e.rounds[0][1], e.costed.candidate.family, e.key)
        for entries in result.evaluated.values()
        for e in entries
        if e.rounds
    ]
    chosen = {(t.chosen.speedup or 0.0, t.first_score) for t in result.targets if t.first_score is not None}
    first = min((e.rounds[0][0] for entries in result.evaluated.values() for e in entries if e.rounds), default=0)
    image = PILImage.new("RGB", PLOT_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    xs = [p[0] for p in points] + [x for x, _ in chosen] or [1.0]
    ys = [p[1] for p in points] + [y for _, y in chosen] or [0.0]
    x_range = _padded(min(xs), max(xs))
    y_range = _padded(min(ys), max(ys))
    width, height = PLOT_SIZE

    def at(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_range[0]) / (x_range[1] - x_range[0])
        fy = (y - y_range[0]) / (y_range[1] - y_range[0])
        return MARGIN + fx * (width - 1.5 * MARGIN), height - MARGIN - fy * (height - 1.5 * MARGIN)

    left, bottom = MARGIN, height - MARGIN
    draw.line([(left, MARGIN / 2), (left, bottom), (width - MARGIN / 2, bottom)], fill=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        x = x_range[0] + fraction * (x_range[1] - x_range[0])
        y = y_range[0] + fraction * (y_range[1] - y_range[0])
        px, _ = at(x, y_range[0])
        _, py = at(x_range[0], y)
        draw.text((px, bottom + 6), f"{x:.2f}x", fill=(0, 0, 0), font=font, anchor="mt")
        draw.text((left - 6, py), f"{y:.3f}", fill=(0, 0, 0), font=font, anchor="rm")
    draw.text(
        (width / 2, height - 14), "FLOPs speed-up over the model's sampler", fill=(0, 0, 0), font=font, anchor="mm"
    )
    draw.text((8, 8), f"score on the first {first} selection samples (higher is better)", fill=(0, 0, 0), font=font)
    for x, y, family, _ in sorted(points, key=lambda p: p[3]):
        px, py = at(x, y)
        if family == BUILTIN:
            draw.rectangle([px - 4, py - 4, px + 4, py + 4], outline=(200, 30, 30), width=2)
        else:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(60, 90, 200))
    for x, y in sorted(chosen):
        px, py = at(x, y)
        draw.ellipse([px - 8, py - 8, px + 8, py + 8], outline=(20, 150, 60), width=3)
    legend_x = width - 230
    draw.ellipse([legend_x, 10, legend_x + 6, 16], fill=(60, 90, 200))
    draw.text((legend_x + 10, 13), "candidate", fill=(0, 0, 0), font=font, anchor="lm")
    draw.rectangle([legend_x + 70, 9, legend_x + 78, 17], outline=(200, 30, 30), width=2)
    draw.text((legend_x + 82, 13), "built-in", fill=(0, 0, 0), font=font, anchor="lm")
    draw.ellipse([legend_x + 135, 6, legend_x + 149, 20], outline=(20, 150, 60), width=3)
    draw.text((legend_x + 153, 13), "recommended", fill=(0, 0, 0), font=font, anchor="lm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _padded(low: float, high: float) -> tuple[float, float]:
    span = high - low or max(abs(high), 1.0) * 0.1
    return low - 0.05 * span, high + 0.05 * span


def write_outputs(result: TuneResult, folder: Path, today: str | None = None) -> list[Path]:
    """Write every output of `result` into `folder`; returns their paths."""
    day = today or datetime.date.today().isoformat()
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = folder / name
        write_atomically(path, lambda handle: handle.write(data))
        written.append(path)

    for target in result.targets:
        put(f"{recipe_name(target.target)}.yaml", tuned_recipe_text(result, target, day).encode("utf-8"))
    put("report.md", report_markdown(result, day).encode("utf-8"))
    put("pareto.png", pareto_png(result))
    put("tune.json", json.dumps(tune_json(result), indent=2, allow_nan=False).encode("utf-8"))
    return written


def summary_lines(result: TuneResult) -> Sequence[str]:
    """What the command prints: one line per speed-up."""
    lines = []
    for target in result.targets:
        held = target.held_out[0].metrics.get(SCORE, (math.nan, math.nan))
        lines.append(
            f"{target.target:g}x: {target.chosen.candidate.label} ({target.chosen.speedup:.2f}x FLOPs), held-out "
            f"score {held[0]:.4f} ± {held[1]:.3f}" + (f" [{target.note}]" if target.note else "")
        )
    return lines
