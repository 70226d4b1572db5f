"""``ralu compare``: paired differences of two recipes in a bench report, with their spread."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ralu_core.errors import RaluError
from ralu_core.measurement.paired import check_report, compare


def _read_report(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RaluError(f"cannot read the bench report {path}: {exc}") from None
    except RecursionError:
        raise RaluError(f"cannot read the bench report {path}: it is nested too deeply to be one") from None
    return dict(check_report(report, str(path)))


def run(ns: argparse.Namespace) -> int:
    report = _read_report(ns.report)
    other = None if ns.second_report is None else _read_report(ns.second_report)
    results = compare(report, ns.first, ns.second, ns.metric, second_report=other)
    if ns.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    pairs = max((r.pairs for r in results), default=0)
    where = "" if other is None else f" from {ns.second_report}"
    print(f"{ns.first} (A) against {ns.second}{where} (B), paired by (prompt, seed): {pairs} pairs")
    print(
        f"{'metric':<18} {'mean A':>8} {'mean B':>8} {'A higher':>9} {'B higher':>9} {'equal':>6} {'sign test p':>12}"
    )
    for r in results:
        print(
            f"{r.metric:<18} {r.first_mean:>8.3f} {r.second_mean:>8.3f} {r.first_higher:>9} {r.second_higher:>9} "
            f"{r.equal:>6} {r.p_value:>12.2g}"
        )
    return 0
