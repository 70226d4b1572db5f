"""What an adapter guarantees for a pipeline that edits from a reference image whose tokens ride along with the
generated ones (FLUX.1 Kontext): the baseline equals the plain pipeline bit for bit (one reference image for
every prompt or one per prompt, one generator or one per image, and no reference at all), every recipe runs with
the reference, a batch equals its single calls, the reference matters, and the pipeline is left as it was.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, RecipesOnAPipeline, assert_same_snapshot, pipeline_snapshot, seeded
from ralu_core.testing.img2img import input_images


class ReferenceImageConformance(RecipesOnAPipeline):
    """pytest mixin. Subclass as ``Test...``, set the class attributes (`call` holds what the pipeline needs to keep
    the size, e.g. Kontext's ``max_area``), implement `make_pipeline`."""

    steps: ClassVar[int] = 4
    reference_size: ClassVar[tuple[int, int]] = (64, 64)
    """The reference images' size (height, width): not the output's, as users' references seldom are."""

    def reference(self, count: int, seed: int = 5) -> torch.Tensor:
        return input_images(count, *self.reference_size, seed=seed)

    def run_with_reference(
        self, pipe: Any, recipe: str | None, prompts: list[str], seeds: list[int] | int, **extra: Any
    ) -> Any:
        """Latents of `prompts`, one generator per seed (or one for all), with a reference (a default one)."""
        generator = seeded(seeds)
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent", **extra}
        kwargs.setdefault("image", self.reference(1))
        if recipe is None or recipe == self.baseline:
            kwargs.setdefault("num_inference_steps", self.steps)
        call = pipe if recipe is None else accelerate(pipe, recipe)
        return call(prompt=prompts if len(prompts) > 1 else prompts[0], generator=generator, **kwargs).images

    def test_the_baseline_is_the_plain_pipeline_with_its_reference(self) -> None:
        pipe = self.fresh()
        prompts = list(PROMPTS)
        cases: list[tuple[Any, dict[str, Any]]] = [
            ([0, 1], {"image": self.reference(2, seed=8)}),  # a reference and a generator per prompt
            (7, {}),  # one reference for both prompts, one generator
            ([0, 1], {"image": None}),  # no reference: text-to-image
        ]
        for seeds, extra in cases:
            ours = self.run_with_reference(pipe, self.baseline, prompts, seeds, **extra)
            assert torch.equal(ours, self.run_with_reference(pipe, None, prompts, seeds, **extra)), (seeds, extra)

    def test_recipes_run_with_the_reference_and_a_batch_equals_single_calls(self) -> None:
        pipe = self.fresh()
        before = None
        for recipe in self.recipes:
            references = self.reference(2, seed=8)
            batch = self.run_with_reference(pipe, recipe, list(PROMPTS), [3, 4], image=references)
            singles = torch.cat(
                [
                    self.run_with_reference(pipe, recipe, [p], [s], image=references[i : i + 1])
                    for i, (p, s) in enumerate(zip(PROMPTS, (3, 4), strict=True))
                ]
            )
            assert torch.isfinite(batch).all(), recipe
            gap = float((batch - singles).abs().max())
            assert gap <= 1e-5, f"{recipe}: a batch differs from single calls by {gap}"
            other = self.run_with_reference(pipe, recipe, [PROMPTS[0]], [3], image=self.reference(1, seed=9))
            assert (other - batch[:1]).abs().max() > 1e-3, f"{recipe}: the reference image changed nothing"
            if before is None:
                before = pipeline_snapshot(pipe)
        assert before is not None
        assert_same_snapshot(before, pipeline_snapshot(pipe))
