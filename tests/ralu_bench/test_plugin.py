"""ralu-bench's metrics and prompt set, as ``ralu bench`` sees them through the plugin system."""

from __future__ import annotations

import math

import attrs
import pytest

from ralu_bench.shapeeval import parse_caption
from ralu_bench.shapes import ShapesDataset
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes.loader import load_recipe_file
from ralu_core.recipes.model import Recipe, Stage, StrategyRef


def registry() -> Registry:
    return Registry.collect(create_plugin_manager())


def test_metrics_and_prompt_set_are_registered_through_the_entry_point() -> None:
    reg = registry()
    assert {"psnr", "ssim", "edge_psnr", "lpips", "shapeeval"} <= set(reg.metrics)
    assert all(reg.metrics[name].plugin == "bench" for name in ("psnr", "shapeeval"))
    prompts = reg.prompt_sets["shapes"].obj(5)
    assert len(prompts) == 5 and prompts == reg.prompt_sets["shapes"].obj(5)
    assert all(parse_caption(p) for p in prompts)


def test_paired_metrics_score_against_the_reference() -> None:
    reg = registry()
    image = ShapesDataset(seed=1, length=1)[0].image
    assert reg.metrics["psnr"].obj.score(image, image, "x") == math.inf
    assert reg.metrics["ssim"].obj.score(image, image, "x") == 1.0
    lpips = reg.metrics["lpips"].obj
    assert lpips.score(image, image, "x") is None or lpips.note() == ""


def test_shapeeval_metric_judges_images_against_their_prompt() -> None:
    metric = registry().metrics["shapeeval"].obj
    data = ShapesDataset.split("heldout", seed=0, length=6)
    assert [metric.score(s.image, None, s.caption) for s in data] == [1.0] * 6
    wrong = data[0].caption.replace(
        data[0].scene.shapes[0].colour, "purple" if "purple" not in data[0].caption else "red"
    )
    assert metric.score(data[0].image, None, wrong) == 0.0
    assert metric.score(data[0].image, None, "a photo of a cat") is None  # declines prompts about other things


def test_shapeeval_jaccard_gives_partial_credit() -> None:
    metric = registry().metrics["shapeeval_jaccard"].obj
    data = ShapesDataset.split("heldout", seed=0, length=40)
    scene = next(s for s in data if len(s.scene.shapes) == 2)
    assert metric.score(scene.image, None, scene.caption) == 1.0
    first = scene.scene.shapes[0]
    other = next(c for c in ("red", "blue", "green", "purple") if c not in scene.caption)
    wrong = scene.caption.replace(f"{first.colour} {first.kind}", f"{other} {first.kind}")
    # One of two named pairs is seen, plus the unnamed real one: 1 shared of 3 in the union.
    assert metric.score(scene.image, None, wrong) == pytest.approx(1 / 3)
    assert metric.score(scene.image, None, "a photo of a cat") is None


ABLATIONS = {  # ablation recipe -> (the RALU recipe it ablates, what it changes)
    "ralu-flux-4x-naive": ("ralu-flux-4x", "naive"),
    "ralu-flux-5x-naive": ("ralu-flux-5x", "naive"),
    "ralu-flux-7x-naive": ("ralu-flux-7x", "naive"),
    "ralu-flux-4x-random": ("ralu-flux-4x", "random"),
    "ralu-flux-4x-solved": ("ralu-flux-4x", "solved"),
    "ralu-flux-5x-solved": ("ralu-flux-5x", "solved"),
    "ralu-flux-7x-solved": ("ralu-flux-7x", "solved"),
    "ralu-sd3-2x-solved": ("ralu-sd3-2x", "solved"),
    "ralu-sd3-3x-solved": ("ralu-sd3-3x", "solved"),
    "ralu-flux-7x-random": ("ralu-flux-7x", "random"),
    "ralu-sd3-2x-naive": ("ralu-sd3-2x", "naive"),
    "ralu-sd3-2x-random": ("ralu-sd3-2x", "random"),
    "ralu-sd3-3x-naive": ("ralu-sd3-3x", "naive"),
    "ralu-sd3-3x-random": ("ralu-sd3-3x", "random"),
}


def ablate(target: Recipe, change: str) -> Recipe:
    """The RALU recipe with only the change an ablation's name promises (name and description aside)."""
    solved = {k: v for k, v in target.schedule.params.items() if k not in ("shifts", "c", "source")}
    if change == "solved":  # NT-DM's solver instead of the published shifts and c
        return attrs.evolve(target, schedule=attrs.evolve(target.schedule, params=solved))
    if change == "naive":  # naive upsampling: no rewind, no noise correction, pieces of the base schedule
        schedule = attrs.evolve(target.schedule, params={**solved, "rewind": False})
        naive = StrategyRef(name="naive-upsample")
        return attrs.evolve(
            target,
            schedule=schedule,
            stages=tuple(attrs.evolve(s, transition=naive) if s.transition else s for s in target.stages),
        )

    def random(s: Stage) -> Stage:  # same ratio, so the same tokens counted and the same FLOPs
        if s.selector is None or s.selector.name != "canny-edge":
            return s
        return attrs.evolve(s, selector=StrategyRef(name="random", params=s.selector.params))

    return attrs.evolve(target, stages=tuple(random(s) for s in target.stages))


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_recipes_change_only_what_their_name_says(ablation: str) -> None:
    """The findings compare each ablation with its RALU recipe at equal FLOPs: everything must match but
    the one change (naive upsampling without the NT-DM rewind, random instead of Canny-edge tokens, or
    the solver's schedule instead of the published one)."""
    reg = registry()
    target_name, change = ABLATIONS[ablation]
    ablated, target = (load_recipe_file(reg.recipes[name].obj) for name in (ablation, target_name))
    assert reg.recipes[ablation].plugin == "bench"
    expected = ablate(target, change)
    assert expected != target
    assert attrs.evolve(ablated, name=target.name, description=target.description) == expected
