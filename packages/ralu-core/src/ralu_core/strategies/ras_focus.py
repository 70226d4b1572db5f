"""`ras-focus`: the token selector of RAS (region-adaptive sampling, Liu et al., arXiv 2502.10389).

At each sparse step RAS computes only the tokens the model is focused on, chosen from the last step's
output: per token, the standard deviation over channels of the update (sigma_next - sigma) * v,
averaged over the latent pixels of the token. The paper observes that the subject in focus has the
lower spread; those tokens are computed, the rest reuse their last output (``computes: highest``
turns this round, for models where it does not hold). The step size multiplies every token's spread
alike, so the ranking uses the velocity's spread directly.

Starvation prevention: a token dropped for D consecutive steps has its spread multiplied by
exp(-k D) (by exp(k D) when the highest are computed), so the longer it waits, the likelier it is
computed again (the authors' code applies the factor with the opposite effect, and ignores k).
Remaining ties go to the call's generator.

The schedule: the first `dense_warmup` steps of the stage and the `dense_steps` (error resets) compute
every token; the sparse steps compute `ratio` of them, or a ratio going linearly from `ratio` to
`ratio_end` over the sparse steps. It is checked against the stage's step count before any model runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from ralu_core.errors import ConfigFieldError
from ralu_core.sampling.randomness import rand
from ralu_core.strategies.base import SelectionRequest, TokenSelector
from ralu_core.strategies.selectors import rank_top


def _check(instance: RASFocusConfig) -> None:
    if not 0.0 < instance.ratio <= 1.0:
        raise ConfigFieldError(
            "ratio", f"must be in (0, 1] (the share of tokens computed per step), got {instance.ratio}"
        )
    if not 0.0 <= instance.starvation <= 10.0:
        raise ConfigFieldError("starvation", f"must be from 0 (off) to 10, got {instance.starvation}")
    if instance.metric not in METRICS:
        raise ConfigFieldError("metric", f"must be one of {', '.join(METRICS)}, got {instance.metric!r}")
    if instance.computes not in ("lowest", "highest"):
        raise ConfigFieldError("computes", f"must be lowest or highest, got {instance.computes!r}")
    if instance.dense_warmup < 1:  # it was run as 1 while `ralu flops` counted the sparse steps it implied
        raise ConfigFieldError(
            "dense_warmup",
            f"must be at least 1 (the first step has no output to choose from), got {instance.dense_warmup}",
        )
    negative = [step for step in instance.dense_steps if step < 0]
    if negative:
        raise ConfigFieldError(
            "dense_steps", f"are step indices within the stage, from 0; got {', '.join(map(str, negative))}"
        )
    if instance.ratio_end is not None and not 0.0 < instance.ratio_end <= 1.0:
        raise ConfigFieldError(
            "ratio_end",
            f"must be in (0, 1] (the share of tokens computed at the last sparse step), got {instance.ratio_end}",
        )


METRICS = ("output-spread", "random")


@attrs.frozen(kw_only=True)
class RASFocusConfig:
    ratio: float = 0.5
    """Share of a stage's tokens computed at each sparse step (at least one token)."""
    starvation: float = 0.1
    """k in exp(-k D): how fast a token dropped for D steps in a row climbs back (0: no prevention)."""
    dense_warmup: int = 4
    """The first steps of the stage, computed densely (at least 1: the first has no output to choose from)."""
    dense_steps: tuple[int, ...] = ()
    """Later steps computed densely to reset the accumulated error (indices within the stage, from 0)."""
    ratio_end: float | None = None
    """Where given, the ratio goes linearly from `ratio` to this over the sparse steps (RAS's dynamic schedule)."""
    metric: str = "output-spread"
    """What ranks the tokens: ``output-spread`` (RAS), or ``random``, the ablation: uniform random scores
    under the same schedule and starvation prevention."""
    computes: str = "lowest"
    """Which end of the spread is computed: ``lowest`` (RAS: the paper finds the subject in focus has the lower
    spread), or ``highest`` (for models where the subject has the higher spread; see docs/ras.md)."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def output_spread(velocity: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(B, N, C*p*p) -> (B, N): per token, the std over channels at each latent pixel, averaged over pixels."""
    batch, count, _ = velocity.shape
    per_pixel = velocity.float().reshape(batch, count, channels, patch * patch)
    return per_pixel.std(dim=2, unbiased=False).mean(dim=2)


class RASFocusSelector(TokenSelector):
    """RAS: compute the tokens of lowest output spread (the model's focus), long-dropped ones catching up, on a
    schedule of dense warm-up and reset steps."""

    name: ClassVar[str] = "ras-focus"
    Config = RASFocusConfig
    tune_roles: ClassVar[tuple[str, ...]] = ("step",)
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"ratio": (0.25, 0.5, 0.75), "dense_warmup": (2, 4)}

    def __init__(self, config: RASFocusConfig | None = None) -> None:
        super().__init__(config)
        self.reset()

    def reset(self) -> None:
        self._cells: torch.Tensor | None = None
        self._dropped: torch.Tensor | None = None

    def planned_count(self, num_candidates: int) -> int:
        return self._count(num_candidates, self.config.ratio)

    @staticmethod
    def _count(tokens: int, ratio: float) -> int:
        return min(tokens, max(1, int(tokens * ratio)))

    def step_counts(self, steps: int, num_tokens: int) -> tuple[int, ...]:
        config: RASFocusConfig = self.config
        dense = {j for j in range(steps) if j < config.dense_warmup or j in config.dense_steps}
        sparse = [j for j in range(steps) if j not in dense]
        counts = dict.fromkeys(dense, num_tokens)
        for position, step in enumerate(sparse):
            ratio = config.ratio
            if config.ratio_end is not None and len(sparse) > 1:
                ratio += (config.ratio_end - config.ratio) * position / (len(sparse) - 1)
            counts[step] = self._count(num_tokens, ratio)
        return tuple(counts[j] for j in range(steps))

    def check_steps(self, steps: int) -> list[str]:
        config: RASFocusConfig = self.config
        problems = []
        beyond = [j for j in config.dense_steps if j >= steps]
        if beyond:
            problems.append(
                f"dense_steps {beyond} lie beyond this stage's {steps} steps (0 to {steps - 1}); "
                "give indices within the stage, or more steps"
            )
        if config.dense_warmup >= steps:
            problems.append(
                f"dense_warmup {config.dense_warmup} covers all of this stage's {steps} steps: nothing would be "
                "sparse; lower it, or give more steps"
            )
        return problems

    def _waiting(self, request: SelectionRequest) -> torch.Tensor:
        """Steps each candidate has been dropped in a row, for the current token set (new set: zeros)."""
        cells = request.state.cells
        same = self._cells is not None and (
            self._cells is cells or (self._cells.shape == cells.shape and torch.equal(self._cells, cells))
        )
        if not same or self._dropped is None:
            self._cells = cells
            self._dropped = torch.zeros(cells.shape[:2], device=cells.device)
        return torch.gather(self._dropped, 1, request.candidates)

    def priority(self, request: SelectionRequest) -> torch.Tensor:
        """(B, M), higher is computed first. The focus (``computes: lowest``): low spread, and a token dropped D
        steps in a row has its spread scaled by exp(-k D). ``highest`` and ``random`` scale theirs by exp(k D):
        either way, the longer a token waits, the likelier it is computed."""
        if request.velocity is None:
            raise ValueError("ras-focus chooses from the last step's output: use it as a stage's step_tokens")
        if self.config.metric == "random":
            score = rand(tuple(request.candidates.shape), request.generator, device=request.candidates.device)
        else:
            grid = request.state.grid
            score = torch.gather(output_spread(request.velocity, grid.channels, grid.patch), 1, request.candidates)
        waiting = self.config.starvation * self._waiting(request)
        if self.config.metric == "output-spread" and self.config.computes == "lowest":
            return -score * torch.exp(-waiting)
        return score * torch.exp(waiting)

    def select(self, request: SelectionRequest) -> torch.Tensor:
        priority = self.priority(request)
        count = self.planned_count(request.candidates.shape[1]) if request.count is None else request.count
        picks = rank_top((priority,), count, request.generator)
        assert self._dropped is not None
        chosen = torch.gather(request.candidates, 1, picks)
        self._dropped += 1
        self._dropped.scatter_(1, chosen, 0.0)
        return picks

    def valid_by_construction(self) -> bool:
        return type(self).select is RASFocusSelector.select  # rank_top's answer
