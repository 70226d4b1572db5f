"""The diffusers hooks of `taylorseer` (see `ralu_caching.taylorseer`): a clock on the first block, a forecast
on every gated branch module, and the modules that only feed those skipped at forecast steps."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

import torch

from ralu_caching.blocks import hooks_installed, standard_blocks
from ralu_caching.forecast_schedule import computes
from ralu_caching.step_clock import ClockState, StepClock, Uncounted
from ralu_caching.taylorseer import TaylorSeerConfig
from ralu_core.pipelines.diffusers_private import ModelHook, StateManager, original_forward
from ralu_core.pipelines.pipeline_call import current_timestep
from ralu_core.strategies.base import BlockFeatures

HOOK = "ralu_taylorseer"

Outputs = tuple[torch.Tensor | None, ...]


class _State(ClockState):
    """One CFG branch's (one context's) series, from the start of the current stage."""

    def clear(self) -> None:
        self.derivatives = False
        self.position = 0.0
        self.full_positions: list[float] = []
        self.factors: dict[int, tuple[bool, list[list[torch.Tensor] | None]]] = {}
        """Forecast module -> (whether it returns a tuple, each output's Taylor factors)."""
        self.shapes: dict[int, tuple[bool, list[tuple[torch.Size, torch.dtype, torch.device] | None]]] = {}
        """Feeding module -> (whether it returns a tuple, each output's shape, dtype and device)."""


def updated_factors(
    previous: list[torch.Tensor] | None, feature: torch.Tensor, distance: float, order: int
) -> list[torch.Tensor]:
    """The Taylor factors after a full step: the feature, then each order's finite difference over
    `distance` against the previous full step's factors (as far as those go)."""
    factors = [feature]
    if previous is not None and distance != 0:
        for k in range(min(order, len(previous))):
            if previous[k].shape != feature.shape:
                break
            factors.append((factors[k] - previous[k]) / distance)
    return factors


def taylor_value(factors: list[torch.Tensor], offset: float) -> torch.Tensor:
    """The series at `offset` from the last full step: sum of factor_k * offset**k / k!."""
    value = factors[0]
    for k in range(1, len(factors)):
        value = value + factors[k] * (offset**k / math.factorial(k))
    return value


def _as_outputs(output: Any) -> tuple[Outputs, bool]:
    """(the module's outputs as a tuple, whether it returned a tuple)."""
    if isinstance(output, torch.Tensor):
        return (output,), False
    return tuple(output), True


def _packed(outputs: list[Any], as_tuple: bool) -> Any:
    return tuple(outputs) if as_tuple else outputs[0]


class _Clock(StepClock):
    """The first block: counts the evaluation, decides whether it is full, and where it lies."""

    def __init__(self, states: StateManager, config: TaylorSeerConfig, denoiser: Any) -> None:
        super().__init__(states, partial(computes, warmup=config.warmup, interval=config.interval))
        self.config, self.denoiser = config, denoiser

    def on_step(self, state: _State, step: int) -> None:
        state.derivatives = step > self.config.warmup - 2  # the official code's first_enhance rule
        state.position = float(step) if self.config.distance == "step" else self._sigma()
        if state.full:
            state.full_positions.append(state.position)

    def _sigma(self) -> float:
        timestep = current_timestep(self.denoiser)
        if timestep is None:
            raise RuntimeError("taylorseer with `distance: sigma` runs only inside an accelerated call")
        return float(timestep.reshape(-1)[0]) / 1000.0


class _Forecast(ModelHook):
    """A gated branch module: computed and its series updated at full steps, forecast at the others.

    Under torch.compile this hook runs inside a compiled block: its bookkeeping runs eagerly (compiler
    disabled), so the graphs hold only the module's own computation and nothing recompiles as the state
    changes from step to step."""

    def __init__(self, states: StateManager, key: int, order: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.key, self.order = states, key, order

    @torch.compiler.disable(recursive=False)  # type: ignore[untyped-decorator]
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forecast = self._forecast()
        if forecast is not None:
            return forecast
        output = original_forward(self)(*args, **kwargs)
        self._record(output)
        return output

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _forecast(self) -> Any:
        """The series at this step, or None where the module must run (a full step, or nothing kept yet)."""
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        kept = state.factors.get(self.key)
        if state.full or kept is None:
            return None
        as_tuple, series = kept
        offset = state.position - state.full_positions[-1]
        return _packed([None if factors is None else taylor_value(factors, offset) for factors in series], as_tuple)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _record(self, output: Any) -> None:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        kept = state.factors.get(self.key)
        outputs, as_tuple = _as_outputs(output)
        positions = state.full_positions
        distance = positions[-1] - positions[-2] if len(positions) > 1 else 0.0
        previous = kept[1] if state.derivatives and kept is not None else [None] * len(outputs)
        state.factors[self.key] = (
            as_tuple,
            [
                None if value is None else updated_factors(old, value, distance, self.order)
                for value, old in zip(outputs, previous, strict=False)
            ],
        )


class _Feeder(ModelHook):
    """A module whose output only a forecast module reads: at forecast steps, zeros of its last shape
    (bookkeeping outside compiled graphs, as in `_Forecast`)."""

    def __init__(self, states: StateManager, key: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.key = states, key

    @torch.compiler.disable(recursive=False)  # type: ignore[untyped-decorator]
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        stand_in = self._stand_in()
        if stand_in is not None:
            return stand_in
        output = original_forward(self)(*args, **kwargs)
        self._record(output)
        return output

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _stand_in(self) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        kept = state.shapes.get(self.key)
        if state.full or kept is None:
            return None
        as_tuple, shapes = kept
        return _packed([None if s is None else torch.zeros(s[0], dtype=s[1], device=s[2]) for s in shapes], as_tuple)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _record(self, output: Any) -> None:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        outputs, as_tuple = _as_outputs(output)
        state.shapes[self.key] = as_tuple, [None if v is None else (v.shape, v.dtype, v.device) for v in outputs]


def _branch_modules(
    denoiser: Any, features: Mapping[str, BlockFeatures]
) -> tuple[torch.nn.Module, list[torch.nn.Module], list[torch.nn.Module]]:
    """(first block, forecast modules, feeding modules) of the denoiser, by the adapter's declarations."""
    from diffusers.utils.torch_utils import unwrap_module

    blocks = standard_blocks(denoiser, at_least=1)
    forecast: list[torch.nn.Module] = []
    feeding: list[torch.nn.Module] = []
    for block in blocks:
        kind = type(unwrap_module(block)).__name__
        declared = features.get(kind)
        if declared is None:
            known = ", ".join(sorted(features)) or "none"
            raise ValueError(
                f"taylorseer does not know what to forecast in {kind} blocks (the adapter declares: {known})"
            )
        for names, into in ((declared.forecast, forecast), (declared.feeds_forecast, feeding)):
            into += [m for name in names if isinstance(m := getattr(block, name, None), torch.nn.Module)]
    return blocks[0], forecast, feeding


@contextmanager
def forecasting_installed(
    denoiser: Any, config: TaylorSeerConfig, features: Mapping[str, BlockFeatures]
) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block."""
    first_block, forecast, feeding = _branch_modules(denoiser, features)
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [(first_block, _Clock(states, config, denoiser), HOOK)]
    placements += [(m, _Forecast(states, key, config.order), HOOK) for key, m in enumerate(forecast)]
    placements += [(m, _Feeder(states, key), HOOK) for key, m in enumerate(feeding)]
    with hooks_installed(denoiser, placements):
        yield


def forecast_counted(denoiser: Any, features: Mapping[str, BlockFeatures]) -> AbstractContextManager[None]:
    """What a forecast step runs, for counting: the forecast and feeding modules leave the count."""
    _, forecast, feeding = _branch_modules(denoiser, features)
    return hooks_installed(denoiser, [(m, Uncounted(), HOOK) for m in (*forecast, *feeding)])
