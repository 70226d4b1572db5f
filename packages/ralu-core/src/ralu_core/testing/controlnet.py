"""What an adapter guarantees for a pipeline steered by a control image (`ControlImageConformance`) and for its
ControlNet pipeline (`ControlNetConformance`): the baseline equals the plain pipeline bit for bit (with a
ControlNet's guidance window and scale too), every recipe follows the control image and a
batch equals its single calls, a conditioning scale of 0 gives exactly the recipe's latents on the plain pipeline
(so the ControlNet's residuals reach the transformer only through the scale), and the pipeline is left as it was.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, RecipesOnAPipeline, assert_same_snapshot, pipeline_snapshot, seeded
from ralu_core.testing.img2img import input_images


class ControlImageConformance(RecipesOnAPipeline):
    """pytest mixin for a pipeline steered by a control image (a ControlNet, or FLUX.1 Canny/Depth's extra
    channels). Subclass as ``Test...``, set the class attributes, implement `make_pipeline` (a tiny pipeline whose
    control changes the image)."""

    steps: ClassVar[int] = 4
    windows: ClassVar[tuple[dict[str, Any], ...]] = (
        {},
        {"control_guidance_start": 0.2, "control_guidance_end": 0.7, "controlnet_conditioning_scale": 0.6},
    )
    """Call options the baseline must honour exactly."""

    def control(self, count: int, seed: int = 5) -> torch.Tensor:
        return input_images(count, self.height, self.width, seed=seed)

    def run_with_control(
        self,
        pipe: Any,
        recipe: str | None,
        prompts: list[str],
        seeds: list[int] | None,
        *,
        control: bool = True,
        **extra: Any,
    ) -> Any:
        """Latents of `prompts` (a generator per seed; None: no generators), with a control image (a default one),
        or, `control` False, on a plain pipeline that takes no control options."""
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent", **extra}
        if control:
            kwargs.setdefault("control_image", self.control(1))
        else:
            kwargs = {key: value for key, value in kwargs.items() if not key.startswith("control")}
        if recipe is None or recipe == self.baseline:
            kwargs.setdefault("num_inference_steps", self.steps)
        generator = seeded(seeds)
        call = pipe if recipe is None else accelerate(pipe, recipe)
        return call(prompt=prompts if len(prompts) > 1 else prompts[0], generator=generator, **kwargs).images

    def test_the_baseline_is_the_plain_pipeline_with_its_control(self) -> None:
        pipe = self.fresh()
        for extra in self.windows:
            controls = self.control(2, seed=8)
            ours = self.run_with_control(pipe, self.baseline, list(PROMPTS), [0, 1], control_image=controls, **extra)
            plain = self.run_with_control(pipe, None, list(PROMPTS), [0, 1], control_image=controls, **extra)
            assert torch.equal(ours, plain), extra

    def test_recipes_follow_the_control_and_a_batch_equals_single_calls(self) -> None:
        pipe = self.fresh()
        before = None
        for recipe in self.recipes:
            controls = self.control(2, seed=8)
            batch = self.run_with_control(pipe, recipe, list(PROMPTS), [3, 4], control_image=controls)
            singles = torch.cat(
                [
                    self.run_with_control(pipe, recipe, [p], [s], control_image=controls[i : i + 1])
                    for i, (p, s) in enumerate(zip(PROMPTS, (3, 4), strict=True))
                ]
            )
            assert torch.isfinite(batch).all(), recipe
            gap = float((batch - singles).abs().max())
            assert gap <= 1e-5, f"{recipe}: a batch differs from single calls by {gap}"
            other = self.run_with_control(pipe, recipe, list(PROMPTS), [3, 4], control_image=controls.flip(0))
            assert (other - batch).abs().max() > 1e-3, f"{recipe}: the control image changed nothing"
            if before is None:
                before = pipeline_snapshot(pipe)
        assert before is not None
        assert_same_snapshot(before, pipeline_snapshot(pipe))


class ControlNetConformance(ControlImageConformance):
    """`ControlImageConformance` for a ControlNet pipeline, and its conditioning scale: at 0, the recipe's latents on
    the plain pipeline. `call` fixes every option whose default differs between the two pipelines (FLUX's
    ``guidance_scale``); implement `plain_pipeline` and `initial_latents` too."""

    @abc.abstractmethod
    def plain_pipeline(self, pipe: Any) -> Any:
        """The text-to-image pipeline on the same components (``FluxPipeline.from_pipe(pipe)``)."""

    @abc.abstractmethod
    def initial_latents(self, pipe: Any, count: int) -> torch.Tensor:
        """`count` images' initial latents in the pipeline's ``latents`` layout."""

    def test_a_zero_scale_gives_the_recipes_latents_without_the_controlnet(self) -> None:
        """Without generators ralu seeds its own randomness from the given latents, so both pipelines draw alike
        (the ControlNet pipeline's VAE encode of the control image draws from a generator)."""
        pipe = self.fresh()
        plain = self.plain_pipeline(pipe)
        latents = self.initial_latents(pipe, 2)
        for recipe in (self.baseline, *self.recipes):
            off = self.run_with_control(
                pipe, recipe, list(PROMPTS), None, latents=latents, controlnet_conditioning_scale=0.0
            )
            without = self.run_with_control(plain, recipe, list(PROMPTS), None, control=False, latents=latents)
            assert torch.equal(off, without), f"{recipe}: a ControlNet at scale 0 changed the latents"


class PerControlNet(list):  # type: ignore[type-arg]
    """One control image batch per ControlNet (a list, as the pipelines take several), sliced and flipped along the
    batch as the conformance checks slice and flip one: for a subclass testing several ControlNets at once."""

    def __init__(self, *images: torch.Tensor) -> None:
        super().__init__(images)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return PerControlNet(*(image[index] for image in self))
        return super().__getitem__(index)

    def flip(self, dim: int) -> PerControlNet:
        return PerControlNet(*(image.flip(dim) for image in self))
