"""Wall time of each `ralu` command, start to exit, as a newcomer meets them (docs/benchmarks.md section 9).

Every command runs in a fresh process `--repeat` times, interleaved (one of each, then again), so that a
change in the machine's load touches all of them alike; the table gives the median and the range. Run it
on an idle machine: on two cores, one other torch process makes these numbers meaningless.

    .venv/bin/python benchmarks/cli_startup.py --repeat 5 > startup.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle at the top left and a blue square at the bottom right on a white background"
COMMANDS: list[tuple[str, list[str]]] = [
    ("--help", ["--help"]),
    ("recipes list", ["recipes", "list"]),
    ("recipes show ralu-flux-7x", ["recipes", "show", "ralu-flux-7x"]),
    ("recipes validate ralu-flux-7x", ["recipes", "validate", "ralu-flux-7x"]),
    ("plugins", ["plugins"]),
    ("schedule --recipe ralu-flux-7x", ["schedule", "--recipe", "ralu-flux-7x"]),
    (
        "schedule --steps 2 3 5 --ends 0.2 0.3 1.0 (solves NT-DM)",
        ["schedule", "--steps", "2", "3", "5", "--ends", "0.2", "0.3", "1.0"],
    ),
    ("generate (misspelled recipe, refused)", ["generate", PROMPT, "--recipe", "ralu-flux-8x"]),
    ("flops --recipe ralu-flux-7x (FLUX.1-dev on the meta device)", ["flops", "--recipe", "ralu-flux-7x"]),
    ("generate PROMPT (the README's first command)", ["generate", PROMPT, "--out", "{tmp}/image.png"]),
]


def time_once(ralu: str, args: list[str], tmp: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [ralu, *(a.format(tmp=tmp) for a in args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ralu", default=str(Path(sys.executable).with_name("ralu")), help="the ralu executable")
    ns = parser.parse_args()
    times: dict[str, list[float]] = {label: [] for label, _ in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(ns.repeat):
            for label, args in COMMANDS:
                times[label].append(time_once(ns.ralu, args, tmp))
    print(f"| command | median s | range s ({ns.repeat} runs) |")
    print("|---|---|---|")
    for label, _ in COMMANDS:
        runs = times[label]
        print(f"| `ralu {label}` | {statistics.median(runs):.2f} | {min(runs):.2f} - {max(runs):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
