"""The diffusers hooks of `toca` (see `ralu_caching.toca`): a clock on the first block, the attention (and
other whole-reused modules) kept and reused, and the token-wise modules run on the fresh tokens only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ralu_caching.attention_received import AttentionReceived
from ralu_caching.blocks import hooks_installed, standard_blocks
from ralu_caching.forecast_schedule import computes
from ralu_caching.step_clock import ClockState, StepClock, Uncounted
from ralu_caching.toca import ToCaConfig, fresh_ratio
from ralu_core.pipelines.diffusers_private import ModelHook, StateManager, original_forward
from ralu_core.strategies.base import TokenwiseFeatures

HOOK = "ralu_toca"
STREAMS = ("image", "text", "joint")


class _State(ClockState):
    """One CFG branch's (one context's) caches, from the start of the current stage."""

    def clear(self) -> None:
        self.scores: dict[int, torch.Tensor] = {}
        """Block -> attention received per key token at the last full step, (B, S)."""
        self.whole: dict[int, Any] = {}
        """Whole-reused module -> its output at the last full step."""
        self.kept: dict[int, torch.Tensor] = {}
        """Chain -> its last module's output per token, fresh tokens written in at every ToCa step."""
        self.ages: dict[int, torch.Tensor] = {}
        """Chain -> ToCa steps since each token was last computed, (B, rows)."""
        self.fresh: dict[int, torch.Tensor] = {}
        """Chain -> this step's fresh token indices, (B, count)."""


@attrs.frozen
class _Chain:
    """Token-wise modules of one stream of one block, and how its tokens are scored."""

    key: int
    block: int
    stream: str
    text_first: bool
    ratio: float
    modules: tuple[torch.nn.Module, ...]


class _Whole(ModelHook):
    """A module reused whole at ToCa steps; the block's attention also records its tokens' scores.

    Under torch.compile these hooks run inside compiled blocks: their bookkeeping runs eagerly (compiler
    disabled), so the graphs hold only the modules' own computation, as for `taylorseer`."""

    def __init__(self, states: StateManager, key: int, scores_block: int | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.key, self.scores_block = states, key, scores_block

    @torch.compiler.disable(recursive=False)  # type: ignore[untyped-decorator]
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        kept = self._kept()
        if kept is not None:
            return kept
        if self.scores_block is None:
            output = original_forward(self)(*args, **kwargs)
            self._record(output, None, module)
            return output
        seen = AttentionReceived()
        with seen:
            output = original_forward(self)(*args, **kwargs)
        self._record(output, seen, module)
        return output

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _kept(self) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        return None if state.full else state.whole.get(self.key)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _record(self, output: Any, seen: AttentionReceived | None, module: torch.nn.Module) -> None:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        if self.scores_block is not None:
            if seen is None or seen.score is None:
                raise RuntimeError(
                    f"toca scores tokens by their attention, and {type(module).__name__} ran no "
                    "torch scaled_dot_product_attention; use diffusers' native attention backend"
                )
            state.scores[self.scores_block] = seen.score
        state.whole[self.key] = output


class _TokenWise(ModelHook):
    """One module of a chain: all tokens at full steps; at ToCa steps only the chain's fresh tokens (picked by
    the first module), the others taken from the kept output (the last module) or left zero (a module
    whose output only the next one reads, at the same tokens). Bookkeeping outside compiled graphs."""

    def __init__(self, states: StateManager, chain: _Chain, position: int, config: ToCaConfig) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.chain, self.config = states, chain, config
        self.first, self.last = position == 0, position == len(chain.modules) - 1

    @torch.compiler.disable(recursive=False)  # type: ignore[untyped-decorator]
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        tokens = _tokens(args)
        fresh = self._fresh(tokens)
        if fresh is None:
            output = original_forward(self)(*args, **kwargs)
            self._record(tokens, output)
            return output
        rows = torch.gather(tokens, 1, fresh[..., None].expand(-1, -1, tokens.shape[-1]))
        computed = original_forward(self)(rows, *args[1:], **kwargs)
        return self._placed(computed, fresh, tokens.shape[1])

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _fresh(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """This step's fresh token indices, or None where every token runs (a full step)."""
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        key = self.chain.key
        if state.full or key not in state.kept:
            return None
        if self.first:
            state.fresh[key] = self._pick(state, tokens.shape[1])
        return state.fresh[key]

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _record(self, tokens: torch.Tensor, output: torch.Tensor) -> None:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        if not state.full:
            return
        if self.first:
            state.ages[self.chain.key] = torch.zeros(tokens.shape[:2], dtype=torch.int32, device=tokens.device)
        if self.last:
            state.kept[self.chain.key] = output

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _placed(self, computed: torch.Tensor, fresh: torch.Tensor, rows: int) -> torch.Tensor:
        """The fresh tokens' outputs written into the kept output (last module) or into zeros."""
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        target = (
            state.kept[self.chain.key] if self.last else computed.new_zeros(fresh.shape[0], rows, computed.shape[-1])
        )
        target.scatter_(1, fresh[..., None].expand(-1, -1, computed.shape[-1]), computed)
        return target

    def _pick(self, state: _State, rows: int) -> torch.Tensor:
        """The fresh tokens' indices (B, count): the highest attention score plus age bonus; ages updated."""
        chain = self.chain
        received = state.scores.get(chain.block)
        if received is None or received.shape[1] < rows:
            raise RuntimeError(
                f"toca has no attention scores for the {rows} {chain.stream} tokens of block {chain.block}"
            )
        score = _stream_part(received, rows, chain.stream, chain.text_first)
        ages = state.ages[chain.key]
        score = F.normalize(score, dim=-1) + self.config.soft_fresh_weight * ages.float() / self.config.interval
        count = int(chain.ratio * rows)
        fresh = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :count]
        ages += 1
        ages.scatter_(1, fresh, 0)
        return fresh


def _tokens(args: tuple[Any, ...]) -> torch.Tensor:
    tokens = args[0] if args else None
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise RuntimeError("toca's token-wise modules take (batch, tokens, channels) as their first argument")
    return tokens


def _stream_part(received: torch.Tensor, rows: int, stream: str, text_first: bool) -> torch.Tensor:
    """The scores of one stream's `rows` tokens, out of the joint sequence's."""
    if stream == "joint":
        return received[:, -rows:]
    leading = (stream == "text") == text_first
    return received[:, :rows] if leading else received[:, -rows:]


@attrs.frozen
class _Layout:
    first_block: torch.nn.Module
    attention: tuple[tuple[torch.nn.Module, int], ...]
    """Each block's attention module with its block index."""
    reused: tuple[torch.nn.Module, ...]
    chains: tuple[_Chain, ...]


def _layout(denoiser: Any, features: Mapping[str, TokenwiseFeatures], config: ToCaConfig) -> _Layout:
    """What to hook in `denoiser`, by the adapter's declarations."""
    from diffusers.utils.torch_utils import unwrap_module

    blocks = standard_blocks(denoiser, at_least=1)
    attention: list[tuple[torch.nn.Module, int]] = []
    reused: list[torch.nn.Module] = []
    chains: list[_Chain] = []
    depth: dict[str, int] = {}
    for index, block in enumerate(blocks):
        kind = type(unwrap_module(block)).__name__
        declared = features.get(kind)
        if declared is None:
            known = ", ".join(sorted(features)) or "none"
            raise ValueError(
                f"toca does not know the token-wise modules of {kind} blocks (the adapter declares: {known})"
            )
        layer = depth[kind] = depth.get(kind, -1) + 1
        module = _child(block, declared.attention)
        if module is None:
            raise ValueError(f"toca: {kind} blocks have no attention module {declared.attention!r}")
        attention.append((module, index))
        reused += [m for name in declared.also_reused if (m := _child(block, name)) is not None]
        for stream in STREAMS:
            names: tuple[str, ...] = getattr(declared, stream)
            modules = tuple(m for name in names if (m := _child(block, name)) is not None)
            if modules and len(modules) == len(names):
                ratio = fresh_ratio(config, layer, declared.ratio_weight)
                chains.append(_Chain(len(chains), index, stream, declared.text_first, ratio, modules))
    return _Layout(blocks[0], tuple(attention), tuple(reused), tuple(chains))


def _child(block: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The block's child module at `name` (a dotted path, as `attn2.to_out.0`), or None where it has none."""
    try:
        return block.get_submodule(name)
    except AttributeError:
        return None


@contextmanager
def toca_installed(denoiser: Any, config: ToCaConfig, features: Mapping[str, TokenwiseFeatures]) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block."""
    layout = _layout(denoiser, features, config)
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [
        (layout.first_block, StepClock(states, partial(computes, warmup=config.warmup, interval=config.interval)), HOOK)
    ]
    placements += [(m, _Whole(states, key, block), HOOK) for key, (m, block) in enumerate(layout.attention)]
    offset = len(layout.attention)
    placements += [(m, _Whole(states, offset + key, None), HOOK) for key, m in enumerate(layout.reused)]
    for chain in layout.chains:
        placements += [(m, _TokenWise(states, chain, i, config), HOOK) for i, m in enumerate(chain.modules)]
    with hooks_installed(denoiser, placements):
        yield


class _Scored(ModelHook):
    """For counting a full step on the meta device: the attention module with its scores recomputed."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        with AttentionReceived():
            return original_forward(self)(*args, **kwargs)


class _FreshCounted(ModelHook):
    """For counting a ToCa step: the module runs on as many tokens as are fresh, its output padded back."""

    def __init__(self, ratio: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ratio = ratio

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        tokens = _tokens(args)
        count = int(self.ratio * tokens.shape[1])
        computed = original_forward(self)(tokens[:, :count], *args[1:], **kwargs)
        padding = computed.new_zeros(tokens.shape[0], tokens.shape[1] - count, computed.shape[-1])
        return torch.cat([computed, padding], dim=1)


def scoring_counted(denoiser: Any, features: Mapping[str, TokenwiseFeatures]) -> AbstractContextManager[None]:
    """What a full step runs, for counting: the model, and the attention maps recomputed for the scores."""
    layout = _layout(denoiser, features, ToCaConfig())
    return hooks_installed(denoiser, [(m, _Scored(), HOOK) for m, _ in layout.attention])


def toca_counted(
    denoiser: Any, config: ToCaConfig, features: Mapping[str, TokenwiseFeatures]
) -> AbstractContextManager[None]:
    """What a ToCa step runs, for counting: no attention, the token-wise modules on the fresh tokens."""
    layout = _layout(denoiser, features, config)
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [
        (m, Uncounted(), HOOK) for m in (*(m for m, _ in layout.attention), *layout.reused)
    ]
    placements += [(m, _FreshCounted(chain.ratio), HOOK) for chain in layout.chains for m in chain.modules]
    return hooks_installed(denoiser, placements)
