"""What diffusers' ControlNet pipelines share across models: each ControlNet's scale at a step, from its
conditioning scale and the share of the steps it acts in (``control_guidance_start`` / ``_end``)."""

from __future__ import annotations

from typing import Any

from ralu_core.strategies.base import StepInfo


def _per_net(value: Any, count: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * count


def controlnet_scales(scale: Any, start: Any, end: Any, count: int, step: StepInfo | None) -> list[float]:
    """Each of `count` ControlNets' scale at `step`: its conditioning scale inside its guidance window, else 0, as
    the pipelines' ``controlnet_keep`` computes it, with step ``i`` of ``n`` read over the whole run (every stage's
    steps); where the step is unknown, the conditioning scales."""
    scales, starts, ends = _per_net(scale, count), _per_net(start, count), _per_net(end, count)
    if step is None or step.run_steps == 0:
        return [float(s) for s in scales]
    i, n = step.run_step, step.run_steps
    return [
        scale * (1.0 - float(i / n < first or (i + 1) / n > last))
        for scale, first, last in zip(scales, starts, ends, strict=False)
    ]
