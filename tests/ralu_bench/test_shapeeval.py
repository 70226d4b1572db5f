"""ShapeEval: the shipped weights load offline, score held-out renders well, and handle every input type."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from ralu_bench.shapeeval import LABELS, Images, ShapeEval, parse_caption
from ralu_bench.shapes import BACKGROUNDS, COLOURS, KINDS, Sample, Scene, ShapesDataset, render


@pytest.fixture(scope="module")
def evaluator() -> ShapeEval:
    return ShapeEval.load()


@pytest.fixture(scope="module")
def heldout() -> list[Sample]:
    """Held-out scenes: a seed range disjoint from the training split."""
    data = ShapesDataset.split("heldout", seed=0, length=200)
    return [data[i] for i in range(len(data))]


def test_labels_are_every_colour_kind_pair_once() -> None:
    assert len(LABELS) == 32 and set(LABELS) == {(c, k) for c in COLOURS for k in KINDS}


def test_shipped_weights_load_offline_and_are_small(evaluator: ShapeEval) -> None:
    folder = resources.files("ralu_bench") / "weights"
    assert len((folder / "shapeeval.safetensors").read_bytes()) < 1_000_000
    assert sum(p.numel() for p in evaluator.net.parameters()) < 300_000
    assert not evaluator.net.training
    meta = evaluator.meta
    assert meta["heldout_exact_set_accuracy"] >= 0.97
    assert {"seed", "command", "torch_version", "train_size", "epochs", "wall_clock_s"} <= set(meta)


def test_heldout_exact_set_accuracy(evaluator: ShapeEval, heldout: list[Sample]) -> None:
    images = np.stack([s.image for s in heldout])
    assert evaluator.accuracy(images, [s.caption for s in heldout]) >= 0.95


def test_mismatched_captions_score_near_zero(evaluator: ShapeEval, heldout: list[Sample]) -> None:
    images = np.stack([s.image for s in heldout])
    captions = [s.caption for s in heldout]
    shifted = captions[1:] + captions[:1]
    assert evaluator.accuracy(images, shifted) <= 0.05


def test_parse_caption_recovers_scene_labels() -> None:
    data = ShapesDataset(seed=5, length=100)
    for i in range(100):
        scene = data.scene(i)
        assert parse_caption(scene.caption()) == scene.labels
    assert parse_caption("a blue square") == {("blue", "square")}
    assert parse_caption("Two Red circles, and an orange diamond.") == {("red", "circle"), ("orange", "diamond")}


@pytest.mark.parametrize("caption", ["on a white background", "a red thing", "", "a square"])
def test_parse_caption_rejects_captions_naming_no_shape(caption: str) -> None:
    with pytest.raises(ValueError, match="names no"):
        parse_caption(caption)


def test_every_input_type_gives_the_same_result(evaluator: ShapeEval, heldout: list[Sample]) -> None:
    arrays = [s.image for s in heldout[:6]]
    batch = np.stack(arrays)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    reference = evaluator.probabilities(batch)
    assert reference.shape == (6, 32)
    variants: dict[str, Images] = {
        "list of arrays": arrays,
        "list of PIL": [Image.fromarray(a) for a in arrays],
        "float tensor": tensor,
    }
    for name, images in variants.items():
        torch.testing.assert_close(evaluator.probabilities(images), reference, msg=name)
        assert evaluator.predict(images) == evaluator.predict(batch), name
    single = evaluator.predict(arrays[0])
    assert single == evaluator.predict(Image.fromarray(arrays[0])) == evaluator.predict(batch[:1])
    assert single == [heldout[0].scene.labels]


def test_any_input_size_is_resized(evaluator: ShapeEval) -> None:
    scene = ShapesDataset.split("heldout", seed=0, length=1).scene(0)
    predictions = [evaluator.predict(render(scene, size))[0] for size in (48, 64, 100, 256)]
    assert all(p == scene.labels for p in predictions)
    mixed = [render(scene, 64), render(scene, 100)]
    assert evaluator.predict(mixed) == [scene.labels, scene.labels]


def test_blank_backgrounds_predict_no_shapes(evaluator: ShapeEval) -> None:
    grounds = [(name,) for name in BACKGROUNDS] + [("white", "black"), ("black", "gray")]
    blanks = np.stack([render(Scene(background=g, shapes=()), 64) for g in grounds])
    assert evaluator.predict(blanks) == [frozenset()] * len(grounds)
    assert evaluator.predict(np.zeros((2, 32, 32, 3), dtype=np.uint8)) == [frozenset()] * 2


def test_internal_batching_does_not_change_results(heldout: list[Sample]) -> None:
    images = np.stack([s.image for s in heldout[:10]])
    small, large = ShapeEval.load(batch_size=3), ShapeEval.load(batch_size=256)
    assert small.predict(images) == large.predict(images)
    torch.testing.assert_close(small.probabilities(images), large.probabilities(images), atol=1e-5, rtol=0)
