"""What an adapter guarantees for its image-to-image pipeline (`Img2ImgConformance`): the baseline recipe equals
the plain img2img pipeline bit for bit (one input image or one per prompt, one generator or one per image, several
strengths), RALU and RAS recipes run from the image, a batch equals its single calls, the input image matters,
and bad input (no image, a strength out of range, `latents` beside an image) is refused before any model runs.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch

from ralu_core.errors import CallError
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, RecipesOnAPipeline, assert_same_snapshot, pipeline_snapshot, seeded


def input_images(count: int, height: int, width: int, seed: int = 5) -> torch.Tensor:
    """(count, 3, height, width) images in [0, 1], as a user's tensors would be."""
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


class Img2ImgConformance(RecipesOnAPipeline):
    """pytest mixin. Subclass as ``Test...``, set the class attributes, implement `make_pipeline` (a tiny
    img2img pipeline, e.g. ``FluxImg2ImgPipeline.from_pipe(tiny)``)."""

    steps: ClassVar[int] = 10
    strength: ClassVar[float] = 0.8
    """High enough that RAS's dense steps (indices into the steps left) stay within the run."""

    def run_from_image(
        self, pipe: Any, recipe: str | None, prompts: list[str], seeds: list[int] | int, **extra: Any
    ) -> Any:
        """Latents of `prompts`, one generator per seed (or one for all), from the call's image (a default one)."""
        generator = seeded(seeds)
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent", **extra}
        kwargs.setdefault("image", input_images(1, self.height, self.width))
        kwargs.setdefault("strength", self.strength)
        if recipe is None or recipe == self.baseline:
            kwargs.setdefault("num_inference_steps", self.steps)
        call = pipe if recipe is None else accelerate(pipe, recipe)
        return call(prompts if len(prompts) > 1 else prompts[0], generator=generator, **kwargs).images

    def test_the_baseline_is_the_plain_img2img_pipeline(self) -> None:
        pipe = self.fresh()
        prompts = list(PROMPTS)
        two = input_images(2, self.height, self.width, seed=8)
        cases: list[tuple[Any, dict[str, Any]]] = [
            ([0, 1], {"image": two}),  # an image and a generator per prompt
            ([0, 1], {"image": two, "strength": 0.35}),
            ([0, 1], {"image": two, "strength": 1.0}),
            (7, {}),  # one image for both prompts, one generator
        ]
        for seeds, extra in cases:
            ours = self.run_from_image(pipe, self.baseline, prompts, seeds, **extra)
            assert torch.equal(ours, self.run_from_image(pipe, None, prompts, seeds, **extra)), (seeds, extra)

    def test_the_baseline_is_the_plain_pipeline_in_bfloat16(self) -> None:
        """The image is noised in the latents' dtype, as the pipeline's ``scale_noise`` noises it."""
        pipe = self.fresh().to(torch.bfloat16)
        ours = self.run_from_image(pipe, self.baseline, [PROMPTS[0]], 2, num_inference_steps=2)
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, self.run_from_image(pipe, None, [PROMPTS[0]], 2, num_inference_steps=2))
        assert self.run_from_image(pipe, self.recipes[0], [PROMPTS[0]], 2).dtype == torch.bfloat16

    def test_recipes_start_from_the_image_and_a_batch_equals_single_calls(self) -> None:
        pipe = self.fresh()
        before = None
        for recipe in self.recipes:
            images = input_images(2, self.height, self.width, seed=8)
            batch = self.run_from_image(pipe, recipe, list(PROMPTS), [3, 4], image=images)
            singles = torch.cat(
                [
                    self.run_from_image(pipe, recipe, [p], [s], image=images[i : i + 1])
                    for i, (p, s) in enumerate(zip(PROMPTS, (3, 4), strict=True))
                ]
            )
            assert torch.isfinite(batch).all(), recipe
            gap = float((batch - singles).abs().max())
            assert gap <= 1e-5, f"{recipe}: a batch differs from single calls by {gap}"
            other = self.run_from_image(
                pipe, recipe, [PROMPTS[0]], [3], image=input_images(1, self.height, self.width, seed=9)
            )
            assert (other - batch[:1]).abs().max() > 1e-3, f"{recipe}: the input image changed nothing"
            if before is None:
                before = pipeline_snapshot(pipe)
        assert before is not None
        assert_same_snapshot(before, pipeline_snapshot(pipe))

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        """(call arguments, the refusal's pattern) that must be refused before any model runs."""
        return [
            ({"image": None}, "needs an `image` to start from"),
            ({"strength": 0.0}, r"strength must lie in \(0, 1\]"),
            ({"strength": 1.5}, r"strength must lie in \(0, 1\]"),
            ({"latents": torch.zeros(1)}, "`latents` with an input image"),
        ]

    def test_bad_input_is_refused_before_any_model_runs(self) -> None:
        pipe = self.fresh()
        calls = 0

        def count(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1

        handle = pipe.transformer.register_forward_pre_hook(count)
        encoder = pipe.vae.encoder.register_forward_pre_hook(count)
        try:
            for recipe in (self.baseline, *self.recipes):
                for extra, message in self.bad_inputs():
                    try:
                        self.run_from_image(pipe, recipe, [PROMPTS[0]], 0, **extra)
                    except CallError as exc:
                        assert re.search(message, str(exc)), (recipe, extra, str(exc))
                    else:
                        raise AssertionError(f"{recipe} with {extra}: not refused")
        finally:
            handle.remove()
            encoder.remove()
        assert calls == 0, f"the model ran {calls} times before a refusal"
