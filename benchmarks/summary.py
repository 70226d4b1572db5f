"""Gather the `ralu bench` reports of benchmarks/gpu.sh into one table, with the goals of docs/benchmarks.md
section 5 checked: ``python benchmarks/summary.py OUT`` writes OUT/summary.md and OUT/summary.json.

Goals, each judged within one report (recipes timed side by side in one run):
- every RALU recipe's wall-clock speed-up is at least 0.9 x its FLOPs speed-up (``wall / FLOPs >= 0.9``);
- ``ralu-flux-7x`` at 1024 x 1024 takes under 1.5 s per image on an H100.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

EFFICIENCY_GOAL = 0.9
FLUX_7X_GOAL_SECONDS = 1.5


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _time_goal(run: str, device: str, seconds: float) -> dict[str, Any]:
    """The time goal is an H100's. An H200 has the H100's compute with faster memory: its time is reported and
    judged, marked as indicative; on any other device the goal is not judged."""
    goal = {"run": run, "goal": f"ralu-flux-7x under {FLUX_7X_GOAL_SECONDS} s per image on an H100", "value": seconds}
    if "H100" in device:
        return goal | {"met": seconds < FLUX_7X_GOAL_SECONDS, "note": ""}
    if "H200" in device:
        return goal | {"met": seconds < FLUX_7X_GOAL_SECONDS, "note": "on an H200, not an H100: indicative"}
    return goal | {"met": False, "note": "not measured on an H100"}


def goals(run: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals this report can judge, each with its measured value and whether it was met."""
    found = []
    settings = report["settings"]
    for row in report["summary"][1:]:
        if row["recipe"].startswith("ralu-"):
            found.append(
                {
                    "run": run,
                    "goal": f"{row['recipe']}: wall / FLOPs >= {EFFICIENCY_GOAL}",
                    "value": row["efficiency"],
                    "met": row["efficiency"] >= EFFICIENCY_GOAL,
                }
            )
        if row["recipe"] == "ralu-flux-7x" and settings["height"] == settings["width"] == 1024:
            found.append(_time_goal(run, report.get("device", ""), row["seconds_per_image"]))
    return found


def summarize(out: Path) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of every report under `out` (one folder per run)."""
    runs = {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("*/report.json"))}
    lines = ["# GPU benchmark (benchmarks/gpu.sh)", ""]
    devices = sorted({report.get("device", "?") for report in runs.values()})
    lines += [f"Device: {', '.join(devices) or 'no report'}.", ""]
    header = ["run", "recipe", "s / image", "wall x", "FLOPs x", "wall / FLOPs", "peak GiB", "graphs (warm-up / timed)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    all_goals = []
    for run, report in runs.items():
        for row in report["summary"]:
            graphs = row.get("graphs_compiled_warmup")
            cells = [
                run,
                row["recipe"],
                _fmt(row["seconds_per_image"]),
                f"{row['speedup_wall']:.2f}x",
                f"{row['speedup_flops_all']:.2f}x",
                f"{row['efficiency']:.2f}",
                _fmt(row.get("peak_memory_gib"), 1),
                "-" if graphs is None else f"{graphs} / {row['graphs_compiled_timed']}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        all_goals += goals(run, report)
    lines += ["", "## Goals", ""]
    for goal in all_goals:
        verdict = "met" if goal["met"] else "MISSED"
        note = f" ({goal['note']})" if goal.get("note") else ""
        lines.append(f"- {goal['run']}: {goal['goal']}: {_fmt(goal['value'])}, {verdict}{note}")
    syncs = {run: report["host_syncs"] for run, report in runs.items() if report.get("host_syncs")}
    if syncs:
        lines += ["", "## Host-device synchronisations in the sampling loop (one eager call per recipe)", ""]
        for run, per_recipe in syncs.items():
            for recipe, found in per_recipe.items():
                lines.append(f"- {run}, {recipe}: {'none' if not found else '; '.join(found)}")
    skipped = out / "skipped.txt"
    if skipped.is_file():
        lines += ["", "## Not run", "", *[f"- {line}" for line in skipped.read_text().splitlines() if line]]
    settings = {run: {**report["settings"], "device": report.get("device")} for run, report in runs.items()}
    data = {
        "devices": devices,
        "runs": {run: report["summary"] for run, report in runs.items()},
        "settings": settings,
        "goals": all_goals,
        "host_syncs": syncs,
    }
    return "\n".join(lines) + "\n", data


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/summary.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    markdown, data = summarize(out)
    (out / "summary.md").write_text(markdown)
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
