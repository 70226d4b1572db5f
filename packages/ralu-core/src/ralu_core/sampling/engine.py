"""The sampling engine: stages of Euler steps over a token state.

Per stage: a fixed token set and sigma grid. Each step asks the stage's feature caches for the
velocity (they decide whether the model runs), optionally for an active subset of tokens only (the
others reuse their last velocity, as in RAS), and advances every token with the scheduler's Euler
rule. Between stages the clean estimate of the last step feeds the selector, and the transition
upsamples and re-noises. Inpainting resets the region it keeps after every step. The engine
owns the caches' lifecycle: whenever the token set changes it tells every cache and the model call
(whose stateful hooks must not see the old tokens), with the map from old tokens to new. Observer
hooks fire at the end of each step and stage.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import attrs
import torch

from ralu_core.errors import PluginError
from ralu_core.sampling.contract import ModelCall
from ralu_core.sampling.events import StageEvent, StepEvent
from ralu_core.sampling.known_region import KnownRegion, KnownTokens
from ralu_core.sampling.randomness import GeneratorArg, generators_from_noise
from ralu_core.sampling.runtime import RecipeRuntime, RuntimeStage
from ralu_core.sampling.token_map import TokenMap
from ralu_core.sampling.token_plan import check_selection, step_counts
from ralu_core.sampling.tokens import (
    FULL,
    HALF,
    TokenGrid,
    TokenState,
    downsample_area,
    downsample_nearest,
    gather_tokens,
    render_latent,
    to_raster,
)
from ralu_core.strategies.base import (
    ScheduleContext,
    SchedulePlan,
    SelectionRequest,
    StageInfo,
    StepInfo,
    TokenSelector,
    TransitionRequest,
)


def euler_step(
    values: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """x <- x + (sigma_next - sigma) v, with the exact arithmetic of diffusers' FlowMatchEulerDiscreteScheduler
    (sample upcast to float32, result cast to the model output's dtype)."""
    updated = values.to(torch.float32) + (sigma_next - sigma) * velocity
    return updated.to(velocity.dtype)


StageScope = Callable[[int], AbstractContextManager[None]]
"""Entered around stage `index` of a run."""


def noised_image(noise: TokenState, image: torch.Tensor, grid: TokenGrid, sigma: torch.Tensor) -> TokenState:
    """Image-to-image's first state: ``sigma * noise + (1 - sigma) * image`` (flow matching's forward process,
    as diffusers' ``scale_noise``), the image taken down to the noise's level by averaging each 2 x 2 block of
    latent pixels where the first stage is at half resolution (the noise keeps its every-second pixel)."""
    picture = TokenState.full_resolution(image.to(noise.values.dtype), grid)
    if noise.coarsest_level == HALF:
        picture = downsample_area(picture)
    # In the latents' dtype, as ``scale_noise`` computes it (a bf16 model's latents stay bf16).
    s = sigma.to(device=noise.values.device, dtype=noise.values.dtype).reshape(1, 1, 1)
    return attrs.evolve(noise, values=s * noise.values + (1.0 - s) * picture.values)


@attrs.frozen
class SigmaGrid:
    """A stage's sigmas on the device, for the Euler arithmetic, and as Python floats, for what the host reads
    (step infos, events, selections, transitions): both made before the loop, so that no step reads a sigma
    back from the device (a host-device synchronisation on a GPU)."""

    values: torch.Tensor
    floats: tuple[float, ...]

    @classmethod
    def of(cls, sigmas: torch.Tensor, device: torch.device) -> SigmaGrid:
        return cls(values=sigmas.to(device), floats=tuple(float(s) for s in sigmas.tolist()))

    @property
    def steps(self) -> int:
        return len(self.floats) - 1


def select_with(selector: TokenSelector, request: SelectionRequest) -> torch.Tensor:
    """Ask a selector; its failures and malformed answers are reported as its plugin's error."""
    try:
        picks = selector.select(request)
    except PluginError:
        raise  # already says which selector and what it did wrong
    except Exception as exc:
        raise PluginError(f"{selector.describe()} failed: {type(exc).__name__}: {exc}") from exc
    return check_selection(selector, picks, request.state.batch_size, request.candidates.shape[1], request.count)


@attrs.define
class SamplingEngine:
    """Runs a resolved recipe on a prepared model call."""

    runtime: RecipeRuntime
    hooks: Any = None

    def plan(self, call: ModelCall) -> SchedulePlan:
        context = ScheduleContext(
            requested_steps=call.requested_steps,
            default_steps=call.default_steps,
            default_shift=call.default_shift,
            pipeline_sigmas=call.pipeline_sigmas,
            strength=call.strength,
            terminal_sigma=call.terminal_sigma,
        )
        plan = self.runtime.schedule.plan([s.spec for s in self.runtime.stages], context)
        if len(plan.sigmas) != len(self.runtime.stages):
            raise RuntimeError(f"schedule {self.runtime.schedule.name!r} planned {len(plan.sigmas)} stages")
        return plan

    def run(self, call: ModelCall, stage_scope: StageScope | None = None) -> TokenState:
        """Sample; returns the final full-resolution state in raster order. `stage_scope(index)`, where given,
        is entered around each stage (the hooks of caches limited to some stages are installed there)."""
        self.runtime.reset()
        plan = self.plan(call)  # checked against the recipe before the call was prepared (`check_call_plan`)
        image = call.start_image()  # before the noise: the pipeline encodes the image first
        noise = call.initial_noise()
        mask = None if image is None else call.inpaint_mask()
        known = None if mask is None or image is None else KnownRegion.of(image, noise, mask, call.grid)
        # ralu's own randomness (transition noise, random selections) follows the call's generators; with
        # none, it is seeded from each image's initial noise, so the same `latents` give the same image.
        generator = call.generator if call.generator is not None else generators_from_noise(noise)
        state = TokenState.full_resolution(noise, call.grid)
        if self.runtime.start_level == HALF:
            state = downsample_nearest(state)
        if image is not None:
            state = noised_image(state, image, call.grid, plan.sigmas[0][:1])
        grids = [SigmaGrid.of(sigmas, state.values.device) for sigmas in plan.sigmas]
        with call.running(), call.progress_bar(sum(plan.steps)) as bar:
            state = self.run_stages(call, generator, grids, state, bar, stage_scope, known)
        return to_raster(state)

    def run_stages(
        self,
        call: ModelCall,
        generator: GeneratorArg,
        grids: list[SigmaGrid],
        state: TokenState,
        bar: Any,
        stage_scope: StageScope | None = None,
        known: KnownRegion | None = None,
    ) -> TokenState:
        """The sampling loop: each stage's transition (after the first) and its steps. Its own method, so that
        tools can scope to it (`HostSyncRecorder.step_loop`). `known`: inpainting's kept region, reset after every
        step and transition."""
        velocity: torch.Tensor | None = None
        total_steps = sum(grid.steps for grid in grids)
        for index, (stage, sigmas) in enumerate(zip(self.runtime.stages, grids, strict=True)):
            token_map = None
            kept = None
            if index > 0:
                assert velocity is not None
                previous = state
                state = self._transition(call, generator, stage, state, velocity, grids[index - 1], sigmas)
                if known is not None:  # the new tokens' kept region, at the new stage's first sigma
                    kept = known.at(state)
                    state = state.with_values(kept.keep(state.values, sigmas.values[0]))
                if any(slot.active_in(index - 1) for slot in self.runtime.caches):  # someone carries state over
                    token_map = TokenMap.between(previous, state)
            with nullcontext() if stage_scope is None else stage_scope(index):
                self._begin_stage(
                    call,
                    StageInfo(
                        index=index,
                        num_tokens=state.num_tokens,
                        steps=sigmas.steps,
                        token_map=token_map,
                        cached_attention=stage.cached_attention,
                    ),
                )
                if kept is None and known is not None:  # the first stage (a transition made it for the others)
                    kept = known.at(state)
                done = sum(grid.steps for grid in grids[:index])
                state, velocity = self._run_stage(
                    call, generator, index, stage, state, sigmas, bar, kept, (done, total_steps)
                )
            if self.hooks is not None:
                levels = {lvl: state.count_at_level(lvl) for lvl in (FULL, HALF)}
                self.hooks.ralu_on_stage_end(
                    event=StageEvent(
                        stage=index,
                        steps=sigmas.steps,
                        num_tokens=state.num_tokens,
                        tokens_per_level=levels,
                        state=state,
                        token_cache_bytes=self._token_cache_bytes(call, stage, velocity),
                    )
                )
        return state

    @staticmethod
    def _token_cache_bytes(call: ModelCall, stage: RuntimeStage, velocity: torch.Tensor) -> int:
        """What a stage with per-step token subsets keeps for the tokens it skips: the model call's keys and
        values, and the output reused for them."""
        if stage.step_tokens is None:
            return 0
        return call.token_cache_nbytes() + velocity.numel() * velocity.element_size()

    def _begin_stage(self, call: ModelCall, info: StageInfo) -> None:
        """A new token set: the model call drops its hooks' state; each cache carries its per-token state
        over through the token map, or, if it did not run in the previous stage, starts afresh (the map is
        built only where a cache ran in the previous stage)."""
        call.begin_stage(info)
        for slot in self.runtime.caches:
            ran_before = info.index > 0 and slot.active_in(info.index - 1)
            slot.cache.begin_stage(info if ran_before else attrs.evolve(info, token_map=None))

    def _run_stage(
        self,
        call: ModelCall,
        generator: GeneratorArg,
        index: int,
        stage: RuntimeStage,
        state: TokenState,
        sigmas: SigmaGrid,
        bar: Any,
        kept: KnownTokens | None = None,
        run: tuple[int, int] = (0, 0),
    ) -> tuple[TokenState, torch.Tensor]:
        velocity: torch.Tensor | None = None
        caches = self.runtime.caches_in(index)
        steps = sigmas.steps
        counts = None
        if stage.step_tokens is not None:
            counts = step_counts(stage.step_tokens, steps, state.num_tokens)
        for step in range(steps):
            sigma, sigma_next = sigmas.values[step], sigmas.values[step + 1]
            sigma_float, sigma_next_float = sigmas.floats[step], sigmas.floats[step + 1]
            active = None
            if counts is not None and counts[step] < state.num_tokens and velocity is not None:
                assert stage.step_tokens is not None
                active = self._active_tokens(
                    call, generator, stage.step_tokens, state, velocity, sigma_float, counts[step]
                )
            info = StepInfo(
                stage=index,
                step=step,
                sigma=sigma_float,
                sigma_next=sigma_next_float,
                active=active,
                steps=steps,
                run_step=run[0] + step,
                run_steps=run[1],
            )
            computed: list[bool] = []

            def compute(
                c: list[bool] = computed,
                s: TokenState = state,
                sg: torch.Tensor = sigma,
                a: torch.Tensor | None = active,
                i: StepInfo = info,
            ) -> torch.Tensor:
                c.append(True)
                return call.predict(s, sg, a, step=i)

            predict: Any = compute
            for cache in reversed(caches):  # the first cache listed wraps the others
                predict = partial(cache.predict, info, predict)
            predicted = predict()
            if active is None:
                velocity = predicted
            else:
                assert velocity is not None
                index_shape = (*active.shape, velocity.shape[-1])
                velocity = velocity.scatter(1, active[..., None].expand(index_shape), predicted)
            values = euler_step(state.values, velocity, sigma, sigma_next)
            state = state.with_values(values if kept is None else kept.keep(values, sigma_next))
            bar.update()
            if self.hooks is not None:
                self.hooks.ralu_on_step_end(
                    event=StepEvent(
                        stage=index,
                        step=step,
                        sigma=sigma_float,
                        sigma_next=sigma_next_float,
                        num_tokens=state.num_tokens,
                        active_tokens=state.num_tokens if active is None else int(active.shape[1]),
                        state=state,
                        computed=bool(computed),
                    )
                )
        assert velocity is not None
        return state, velocity

    def _request(
        self,
        call: ModelCall,
        generator: GeneratorArg,
        state: TokenState,
        candidates: torch.Tensor,
        clean: torch.Tensor | None,
        velocity: torch.Tensor | None,
        sigma: float,
    ) -> SelectionRequest:
        return SelectionRequest(
            state=state,
            candidates=candidates,
            clean_estimate=clean,
            velocity=velocity,
            sigma=sigma,
            generator=generator,
            render=lambda values, level: render_latent(state, values, level),
            decode=call.decode,
        )

    def _active_tokens(
        self,
        call: ModelCall,
        generator: GeneratorArg,
        selector: TokenSelector,
        state: TokenState,
        velocity: torch.Tensor,
        sigma: float,
        count: int,
    ) -> torch.Tensor:
        everything = torch.arange(state.num_tokens, device=state.values.device).expand(state.batch_size, -1)
        clean = state.values.float() - sigma * velocity.float()
        request = self._request(call, generator, state, everything, clean, velocity, sigma)
        picks = select_with(selector, attrs.evolve(request, count=count))
        return gather_tokens(everything, picks)

    def _transition(
        self,
        call: ModelCall,
        generator: GeneratorArg,
        stage: RuntimeStage,
        state: TokenState,
        velocity: torch.Tensor,
        before: SigmaGrid,
        after: SigmaGrid,
    ) -> TokenState:
        """From the end of the stage on `before`'s sigmas to the start of the one on `after`'s."""
        assert stage.selector is not None and stage.transition is not None
        clean = state.values.float() - before.values[-1].float() * velocity.float()
        candidates = state.indices_at_level(HALF)
        request = self._request(call, generator, state, candidates, clean, velocity, before.floats[-1])
        picks = select_with(stage.selector, request)
        selected = gather_tokens(candidates, picks)
        state = stage.transition.apply(
            TransitionRequest(
                state=state,
                selected=selected,
                sigma_from=before.floats[-1],
                sigma_to=after.floats[0],
                generator=generator,
            )
        )
        # Once every token is at full resolution, keep them in raster order: adapters can then use the
        # model's own dense forward (and its position handling) for the rest of the run.
        return to_raster(state) if state.coarsest_level == FULL else state
