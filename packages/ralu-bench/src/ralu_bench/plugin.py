"""ralu-bench's plugin: image metrics, the `shapes` prompt set and the trained reference models."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from ralu_bench import metrics
from ralu_bench.models import reference_models
from ralu_bench.shapes import ShapesDataset
from ralu_core.plugins.hookspecs import RegisterMetric, RegisterModel, RegisterPromptSet, RegisterRecipe, hookimpl
from ralu_core.plugins.image_metric import Image, ImageMetric

PSNR_CEILING = 50.0
"""dB at which two images count as the same for ``ralu tune`` (the reference models' 20 of 28 steps give 50 dB)."""


def psnr_unit(value: float) -> float:
    """PSNR on [0, 1] for ``ralu tune``: dB / 50, capped (identical images, infinite dB, give 1)."""
    return min(1.0, max(0.0, value / PSNR_CEILING))


class PSNR(ImageMetric):
    name: ClassVar[str] = "psnr"
    paired: ClassVar[bool] = True

    def unit_score(self, value: float) -> float:
        return psnr_unit(value)

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        return None if reference is None else metrics.psnr(image, reference)


class SSIM(ImageMetric):
    name: ClassVar[str] = "ssim"
    paired: ClassVar[bool] = True

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        return None if reference is None else metrics.ssim(image, reference)


class EdgePSNR(ImageMetric):
    """PSNR in a band around the baseline image's edges, where RALU's artifacts appear."""

    name: ClassVar[str] = "edge_psnr"
    paired: ClassVar[bool] = True

    def unit_score(self, value: float) -> float:
        return psnr_unit(value)

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        return None if reference is None else metrics.edge_psnr(image, reference)


class LPIPSMetric(ImageMetric):
    """LPIPS when its weights are available locally; otherwise it declines every image and says why."""

    name: ClassVar[str] = "lpips"
    paired: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = False

    def __init__(self) -> None:
        self.available, self.reason = metrics.lpips_status()
        self._model: metrics.LPIPS | None = None

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        if reference is None or not self.available:
            return None
        if self._model is None:
            self._model = metrics.LPIPS()
        return self._model(image, reference)

    def note(self) -> str:
        return "" if self.available else self.reason

    def unavailable(self) -> str:
        return "" if self.available else self.reason


@cache
def _shapeeval() -> Any:
    """The shipped ShapeEval, loaded once on first use (registration must stay cheap) and shared by both
    ShapeEval metrics."""
    from ralu_bench.shapeeval import ShapeEval

    return ShapeEval.load()


class ShapeEvalAccuracy(ImageMetric):
    """1 if ShapeEval sees exactly the (colour, kind) pairs the prompt names, else 0; declines prompts
    that name no shape of the data set (so it is silent on other models' prompts)."""

    name: ClassVar[str] = "shapeeval"
    paired: ClassVar[bool] = False

    def _judge(self, image: Image, prompt: str) -> tuple[frozenset[Any], frozenset[Any]] | None:
        """(predicted, expected) (colour, kind) sets, or None for a prompt outside the shapes language."""
        from ralu_bench.shapeeval import parse_caption

        try:
            expected = parse_caption(prompt)
        except ValueError:
            return None
        return _shapeeval().predict(image)[0], expected

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        judged = self._judge(image, prompt)
        return None if judged is None else float(judged[0] == judged[1])


class ShapeEvalJaccard(ShapeEvalAccuracy):
    """Partial credit: |seen & named| / |seen | named| over (colour, kind) pairs (1 when exact). Separates
    "one of three shapes wrong" from "nothing right", which exact-set accuracy scores alike."""

    name: ClassVar[str] = "shapeeval_jaccard"

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        judged = self._judge(image, prompt)
        if judged is None:
            return None
        seen, named = judged
        return len(seen & named) / len(seen | named)


def shapes_prompts(count: int) -> list[str]:
    """Captions of held-out scenes: prompts the reference models have never seen, with known answers."""
    data = ShapesDataset.split("heldout", seed=0, length=count)
    return [data.scene(i).caption() for i in range(count)]


@hookimpl
def ralu_register_image_metrics(register: RegisterMetric) -> None:
    for metric in (PSNR(), SSIM(), EdgePSNR(), LPIPSMetric(), ShapeEvalAccuracy(), ShapeEvalJaccard()):
        register(metric)


@hookimpl
def ralu_register_prompt_sets(register: RegisterPromptSet) -> None:
    register("shapes", shapes_prompts)


@hookimpl
def ralu_register_models(register: RegisterModel) -> None:
    for model in reference_models():
        register(model)


@hookimpl
def ralu_register_recipes(register: RegisterRecipe) -> None:
    """The controls of docs/benchmarks.md: ablations of RALU at equal FLOPs and fewer-step baselines."""
    for path in sorted(Path(str(files("ralu_bench") / "recipes")).glob("*.yaml")):
        register(path.stem, path)
