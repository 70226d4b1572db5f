"""The four strategy kinds and the requests the engine hands them.

A strategy is a plain Python object built from a frozen attrs config; plugins register the
classes, recipes name them, and the engine calls them directly (pluggy stays off the hot path).
Strategies never see a model: what they need of it (decoding a latent for the Canny selector,
the pipeline's own sigmas for the baseline schedule) comes as callables in the request.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import attrs
import torch

from ralu_core.sampling.randomness import GeneratorArg
from ralu_core.sampling.token_map import TokenMap
from ralu_core.sampling.tokens import TokenState


@attrs.frozen(kw_only=True)
class NoConfig:
    """Config of a strategy that takes no parameters."""


class Strategy(abc.ABC):
    """Common base: a registered name, a config class and a one-line summary (the docstring)."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[Any]] = NoConfig

    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = None
    """What ``ralu tune`` tries of this strategy: config field -> the values to try (a field not named keeps
    its default; ``{}``: the defaults alone). None: tune does not search this strategy (the report says so)."""

    plugin: str | None = None
    """The plugin that registered this strategy (set when a recipe builds it), for error messages."""

    def __init__(self, config: Any = None) -> None:
        self.config = self.Config() if config is None else config

    def describe(self) -> str:
        """``token selector 'canny-edge' (plugin core)``: how errors name this strategy."""
        label = self.kind.replace("_", " ")
        return f"{label} {self.name!r}" + (f" (plugin {self.plugin!r})" if self.plugin else "")

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def reset(self) -> None:  # noqa: B027 - optional override, not abstract
        """Forget per-call state. Called before each generation."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


# --- token selectors ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SelectionRequest:
    """What a selector may look at when choosing among `candidates` (B, M state indices).

    `clean_estimate` is x0_hat = x - sigma * v for every token of the state, from the last model
    call (no extra evaluation). `render` paints values into a dense latent at a level, `decode`
    turns such a latent into RGB in [0, 1] with the pipeline's VAE.
    """

    state: TokenState
    candidates: torch.Tensor
    clean_estimate: torch.Tensor | None
    velocity: torch.Tensor | None
    sigma: float
    generator: GeneratorArg
    render: Callable[[torch.Tensor, int], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    count: int | None = None
    """How many to pick, where the selector's plan varies by step (`step_counts`); None: `planned_count`."""


class TokenSelector(Strategy):
    """Chooses tokens: which to upsample at a transition, or which to compute at a step."""

    kind: ClassVar[str] = "token_selector"
    covers_all: ClassVar[bool] = False
    tune_roles: ClassVar[tuple[str, ...]] = ("upsample",)
    """Where ``ralu tune`` tries this selector: ``upsample`` (a transition's selector of the tokens to bring
    to full resolution) and/or ``step`` (a stage's `step_tokens`, the tokens each step computes)."""
    decodes: ClassVar[bool] = False
    """Whether `select` runs the VAE decoder (counted in FLOPs reports)."""

    @abc.abstractmethod
    def planned_count(self, num_candidates: int) -> int:
        """How many of `num_candidates` this selector picks (known before running: FLOPs, shapes)."""

    @abc.abstractmethod
    def select(self, request: SelectionRequest) -> torch.Tensor:
        """(B, K) positions into `request.candidates`, distinct per image; K = `request.count`, or
        planned_count(M) where that is None."""

    def step_counts(self, steps: int, num_tokens: int) -> tuple[int, ...]:
        """As a stage's `step_tokens`: how many of its `num_tokens` tokens each of its `steps` steps computes
        (`num_tokens`: a dense step). Default: the first step dense (no output to choose from yet), the
        others `planned_count`."""
        return (num_tokens,) + (self.planned_count(num_tokens),) * (steps - 1)

    def check_steps(self, steps: int) -> list[str]:
        """Problems with using this selector in a stage of `steps` steps (checked before any model runs)."""
        return []

    def valid_by_construction(self) -> bool:
        """Whether `select` returns distinct positions within the candidates whatever the scores (as `rank_top`
        does). The engine then checks only the answer's shape and dtype: checking its values reads them from
        the device, which makes the host wait for it at every selection. Default: False, every answer is checked."""
        return False


# --- resolution transitions ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TransitionRequest:
    """Upsample `selected` (B, K state indices of half-res tokens) and move the state from the
    end of one stage (noise level `sigma_from`) to the start of the next (`sigma_to`).

    The engine guarantees that `selected` are distinct half-resolution tokens of `state`, so a transition
    may hand them to `upsample_selected(..., checked=True)`, which then does not read them back from the device.
    """

    state: TokenState
    selected: torch.Tensor
    sigma_from: float
    sigma_to: float
    generator: GeneratorArg


class ResolutionTransition(Strategy):
    """Changes the level of tokens between stages and decides what noise to inject."""

    kind: ClassVar[str] = "transition"
    rewinds: ClassVar[bool] = True

    @abc.abstractmethod
    def apply(self, request: TransitionRequest) -> TokenState:
        """The state at `sigma_to` with the selected tokens at full resolution."""


# --- timestep schedules -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StagePlanSpec:
    """The schedule-relevant part of a recipe stage."""

    steps: int | None
    end: float


@attrs.frozen(kw_only=True)
class ScheduleContext:
    """What a schedule may ask of the call: the pipeline's own sigmas and defaults."""

    requested_steps: int | None
    default_steps: int
    default_shift: float
    pipeline_sigmas: Callable[[int], torch.Tensor]
    strength: float | None = None
    """Image-to-image: how much of the schedule is left to run from the input image (diffusers' `strength`);
    None: sampling starts from pure noise."""
    terminal_sigma: float | None = None
    """The scheduler's terminal sigma (diffusers' ``shift_terminal``), which a schedule spacing its own sigmas
    stretches its last stage to; None: none."""


@attrs.frozen(kw_only=True)
class SchedulePlan:
    """Per stage, descending sigmas (n_k + 1 values, float32); `details` is for reports."""

    sigmas: tuple[torch.Tensor, ...]
    details: dict[str, Any] = attrs.field(factory=dict)

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(len(s) - 1 for s in self.sigmas)


class TimestepSchedule(Strategy):
    """Decides the stages' sigma grids and how far each transition rewinds toward noise."""

    kind: ClassVar[str] = "schedule"
    accepts_requested_steps: ClassVar[bool] = False
    follows_pipeline_sigmas: ClassVar[bool] = False
    """Whether its stages take the pipeline's own sigmas (then a user's sigma spacing is followed); a schedule
    that spaces its own refuses a scheduler configured for another spacing (`ralu_core.pipelines.schedulers`)."""
    starts_from_image: ClassVar[bool] = False
    """Whether it plans a start from an input image part-way down the schedule (`ScheduleContext.strength`)."""

    @property
    def rewinds(self) -> bool:
        """Whether its transitions rewind toward noise (NT-DM); every transition of a recipe must agree with
        its schedule on this (checked when the recipe resolves)."""
        return False

    @abc.abstractmethod
    def check(self, stages: Sequence[StagePlanSpec]) -> list[str]:
        """Problems with these stages for this schedule, as messages (empty when fine)."""

    @abc.abstractmethod
    def plan(self, stages: Sequence[StagePlanSpec], context: ScheduleContext) -> SchedulePlan:
        """The sigma grid of each stage."""

    def planned_steps(
        self, stages: Sequence[StagePlanSpec], default_steps: int, strength: float | None = None
    ) -> tuple[int, ...]:
        """Steps per stage without building the plan (FLOPs counting, checks); `strength`: an image-to-image call."""
        return tuple(default_steps if s.steps is None else s.steps for s in stages)


# --- feature caches -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StageInfo:
    """A new token set: a stage starts. `token_map` relates its tokens to those the cache saw last
    (None at the first stage, or when the cache did not run in the previous stage)."""

    index: int
    num_tokens: int
    steps: int
    token_map: TokenMap | None = None
    cached_attention: bool = False
    """Whether this stage's sparse steps attend to the tokens they skip through cached keys and values
    (RAS): the model call then keeps every token's keys and values, per layer, for the stage."""


@attrs.frozen(kw_only=True)
class StepInfo:
    stage: int
    step: int
    sigma: float
    sigma_next: float
    active: torch.Tensor | None
    steps: int = 0
    """Steps in this stage (0: unknown)."""
    run_step: int = 0
    """This step's index in the whole run, every stage's steps counted."""
    run_steps: int = 0
    """Steps in the whole run (0: unknown): a pipeline's per-step option (ControlNet's guidance window) reads
    ``run_step / run_steps`` as the pipeline reads ``i / len(timesteps)``."""


@attrs.frozen(kw_only=True)
class PlannedStep:
    """What one step of a stage computes, known before running (for exact FLOPs counting)."""

    runs: bool = True
    """Whether the model runs at all (False: a step-level cache supplies the velocity)."""
    reuse: Callable[[Any], AbstractContextManager[None]] | None = None
    """Hooks that make a model skip what this step reuses; entered on the meta-device model when counting."""
    kind: str = "full"
    """A name for this kind of step in reports (``forecast``, ``middle blocks reused``)."""


FULL_STEP = PlannedStep()


@attrs.frozen(kw_only=True)
class BlockFeatures:
    """What a feature-level cache may forecast in one kind of transformer block (adapter knowledge): the
    child modules whose outputs join the block's residual streams through a gate (forecast at a reusing
    step, while modulation, gates and residual additions still run), and the children whose outputs feed
    only those (skipped there; nothing else reads them). Names a block lacks (SD3's `attn2`) are ignored."""

    forecast: tuple[str, ...]
    feeds_forecast: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class TokenwiseFeatures:
    """What a token-wise cache (ToCa) may reuse per token in one kind of transformer block (adapter knowledge).

    `attention` names the child whose output is reused whole between refreshes and whose attention map scores
    the tokens (the attention each token receives). The chains name the children computed for the fresh
    tokens only, in call order: the first reads the block's tokens of that stream (image tokens, text tokens,
    or the joint text + image sequence), the last one's output joins the residual stream through a gate and is
    kept per token. `also_reused` are other children reused whole (SD3.5's second attention). Names are dotted
    paths below the block (`attn2.to_out.0`); names a block lacks are ignored (SD3's last block has no text
    feed-forward)."""

    attention: str
    text_first: bool
    """Whether the attention's joint sequence puts the text tokens before the image tokens."""
    image: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    joint: tuple[str, ...] = ()
    also_reused: tuple[str, ...] = ()
    ratio_weight: float = 1.0
    """The official ToCa code's weight on this block kind's fresh ratio (FLUX: 0.4 double, 1.6 single)."""


@attrs.frozen(kw_only=True)
class ModelBlocks:
    """What an adapter declares about its model's blocks, for caches that reach inside them (adapter knowledge,
    known with no model loaded)."""

    last_block_returns_text: bool = True
    """Whether the denoiser's last block returns the text stream as well as the image stream (False for SD3,
    whose last joint block is `context_pre_only`): caches that add a residual to both streams need it."""
    block_features: Mapping[str, BlockFeatures] = attrs.field(factory=dict)
    """Per block class name: what feature-level caches (TaylorSeer) may forecast in it; empty: refused."""
    token_features: Mapping[str, TokenwiseFeatures] = attrs.field(factory=dict)
    """Per block class name: what token-wise caches (ToCa) may reuse per token in it; empty: refused."""


@attrs.frozen(kw_only=True)
class AdapterFacts:
    """What a strategy may check a recipe against: the adapter's name and its declared blocks."""

    name: str
    blocks: ModelBlocks = ModelBlocks()

    @property
    def last_block_returns_text(self) -> bool:
        return self.blocks.last_block_returns_text

    @property
    def block_features(self) -> Mapping[str, BlockFeatures]:
        return self.blocks.block_features

    @property
    def token_features(self) -> Mapping[str, TokenwiseFeatures]:
        return self.blocks.token_features


class FeatureCache(Strategy):
    """Reuses work across steps instead of recomputing it.

    Three levels, one owner each: at step level the cache's `predict` decides whether the model runs
    at all (and may forecast its output); at block level `attach` installs hooks on the denoiser's
    modules for the duration of a call; token-level reuse (RAS) belongs to adapters. The engine owns
    the lifecycle: `begin_stage` whenever the token set changes, with the map from the old tokens to
    the new, so a cache carries per-token state over or starts again, never reusing features of
    another token count or order.
    """

    kind: ClassVar[str] = "feature_cache"
    forecasts: ClassVar[bool] = False
    """Whether `predict` may answer without running the model (then it needs every token each step)."""
    keeps_block_features: ClassVar[bool] = False
    """Whether its block-level hooks reuse features of earlier evaluations token by token (then every
    evaluation of a stage must carry the same tokens: not a stage with `step_tokens`)."""

    def begin_stage(self, stage: StageInfo) -> None:
        """A new token set starts; anything cached per token must be carried over or dropped."""

    def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The velocity for this step: computed by `compute()` or derived from the cache."""
        return compute()

    def attach(self, denoiser: Any) -> AbstractContextManager[None]:
        """Install block-level hooks on `denoiser` (the pipeline's transformer, None where the adapter
        exposes none) for one call; everything is removed on exit, even after an error. Called before
        any model runs, so an unsuitable model is refused before expensive work."""
        return nullcontext()

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...] | None:
        """What each step of a stage with `steps` steps computes, for exact FLOPs counting; None when it
        depends on the run (adaptive caches: `ralu bench` measures them)."""
        return (FULL_STEP,) * steps

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        """Problems with working in its stages, given as stage index -> step count (those whose count is
        known: checked when the recipe resolves, and again with the call's counts before any model runs),
        e.g. a stage in which it could save nothing."""
        return []

    def check_adapter(self, adapter: AdapterFacts) -> list[str]:
        """Problems with running on this adapter's pipelines, from what the adapter declares (no model
        loaded): checked by `accelerate`, and by `ralu recipes validate` for a recipe that names its model."""
        return []

    def use_model(self, model: AdapterFacts) -> None:
        """The adapter whose pipelines this cache will run on, given once before it attaches or is counted
        (after `check_adapter` found nothing), for caches that need its declarations at work."""

    def measured_reuse(self) -> tuple[int, int] | None:
        """(reused, total) evaluations since the last reset, for adaptive caches that reuse inside the
        model (``ralu bench`` reports the share); None where the engine sees it (step level) or nothing
        adaptive happens."""
        return None


STRATEGY_KINDS: dict[str, type[Strategy]] = {
    TokenSelector.kind: TokenSelector,
    ResolutionTransition.kind: ResolutionTransition,
    TimestepSchedule.kind: TimestepSchedule,
    FeatureCache.kind: FeatureCache,
}
