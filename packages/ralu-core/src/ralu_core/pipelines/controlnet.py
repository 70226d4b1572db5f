"""What diffusers' ControlNet pipelines share across models: each ControlNet's scale at a step, from its
conditioning scale and the share of the steps it acts in (``control_guidance_start`` / ``_end``)."""

from __future__ import annotations

from typing import Any

from ralu_core.errors import CallError
from ralu_core.strategies.base import StepInfo


def controlnets(pipe: Any) -> list[Any]:
    """The pipeline's ControlNets: the nets of a multi-ControlNet, else the one."""
    return list(pipe.controlnet.nets) if hasattr(pipe.controlnet, "nets") else [pipe.controlnet]


def check_control_images(pipe: Any, control_image: Any, height: int, width: int) -> list[Any]:
    """The pipeline's ControlNets, after refusing what its call would fail on (no control image, not one per
    ControlNet where there are several) and control image tensors of another size than the call's."""
    nets = controlnets(pipe)
    check_control_size(control_image, height, width)
    if control_image is None:
        raise CallError(f"{type(pipe).__name__} needs a `control_image`")
    if len(nets) > 1 and (not isinstance(control_image, list) or len(control_image) != len(nets)):
        raise CallError(f"give one control image per ControlNet: a list of {len(nets)}")
    return nets


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


def check_control_size(control_image: Any, height: int, width: int) -> None:
    """A control image given as a tensor (the pipelines pass it unresized, and then take its size for the image's)
    must have the call's size: ralu's token grid is fixed before."""
    for image in control_image if isinstance(control_image, list | tuple) else [control_image]:
        shape = getattr(image, "shape", None)
        if shape is None or len(shape) < 3 or tuple(shape[-2:]) == (height, width):
            continue
        raise CallError(
            f"the control image is {shape[-2]}x{shape[-1]} pixels and the call's size {height}x{width}: give height "
            "and width equal to a control image tensor's size, or a PIL image (the pipeline resizes those)"
        )
