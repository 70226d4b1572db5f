"""ShapeEval: a small shipped classifier that checks whether an image shows the shapes its caption names.

Text alignment of a generated shapes image is measured the way CLIP score is for photographs, but
exactly: a multi-label CNN predicts which (colour, kind) pairs are present, and an image counts as
aligned only when the predicted set equals the set its caption names. The network is tiny and trained
on `ralu_bench.shapes` renders (see `scripts/train_shapeeval.py`), so it ships inside the package and
runs deterministically on CPU.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ralu_bench.shapes import COLOURS, KINDS

LABELS: tuple[tuple[str, str], ...] = tuple((colour, kind) for colour in COLOURS for kind in KINDS)
"""The 32 (colour, kind) pairs, colour-major: the order of ShapeEval's outputs."""

INPUT_SIZE = 64
"""Side the network sees; any input is resized to it, so the score does not depend on generation size."""

WEIGHTS_NAME = "shapeeval.safetensors"
CONFIG_NAME = "shapeeval.json"

Images: TypeAlias = "npt.NDArray[Any] | torch.Tensor | Image.Image | Sequence[Image.Image | npt.NDArray[Any]]"
"""uint8 (B, H, W, 3) or (H, W, 3) arrays, PIL images or arrays in a list, or a float (B, 3, H, W) tensor in [0, 1]."""

_WORD = re.compile(r"[a-z]+")


def parse_caption(caption: str) -> frozenset[tuple[str, str]]:
    """The (colour, kind) pairs a caption names: a colour word directly followed by a kind word.

    Accepts data set captions and short prompts ("a blue square", "two red circles"). Raises
    ValueError when none is named, since an empty target would make every blank image "aligned".
    """
    words = _WORD.findall(caption.lower())
    pairs = set()
    for colour, kind in itertools.pairwise(words):
        if kind not in KINDS and kind.endswith("s"):
            kind = kind[:-1]
        if colour in COLOURS and kind in KINDS:
            pairs.add((colour, kind))
    if not pairs:
        raise ValueError(f"caption names no (colour, kind) pair: {caption!r}")
    return frozenset(pairs)


def resize(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """(B, 3, H, W) floats to (B, 3, size, size), antialiased so downscaling averages instead of aliasing.

    Shared with the training script so that training images go through exactly the evaluation path.
    """
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).contiguous()


def _block(cin: int, cout: int, *, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class ShapeEvalNet(nn.Module):
    """Per-location (colour, kind) logits max-pooled over the image: "is this pair anywhere?".

    Pixel-unshuffle first halves the resolution losslessly, which keeps the CPU cost of the full-size
    first layer away; the receptive field of the last layer (~30 px at 64) covers the largest shape.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), num_labels: int = len(LABELS)) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = [nn.PixelUnshuffle(2)]
        cin = 12
        for i, width in enumerate(self.widths):
            layers += _block(cin, width, pool=i < len(self.widths) - 1)
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, num_labels, 1)
        # Each pair is absent from almost every location: starting the logits low (sigmoid(-4) ~ 0.02) skips
        # the long plateau where the max over locations is a confident false positive everywhere.
        assert self.head.bias is not None
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to (B, num_labels) logits."""
        logits = self.head(self.features(images * 2.0 - 1.0))
        return logits.amax(dim=(2, 3))


def _as_chw(image: Image.Image | npt.NDArray[Any]) -> torch.Tensor:
    """One image to a float (3, H, W) tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return _hwc_to_float(array[None])[0]


def _hwc_to_float(array: npt.NDArray[Any]) -> torch.Tensor:
    """(B, H, W, 3) uint8 or float array to (B, 3, H, W) float32 in [0, 1]."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
        array = array.copy()
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float()


class ShapeEval:
    """The shipped classifier plus its input handling; `accuracy` is the text-alignment score."""

    def __init__(
        self,
        net: ShapeEvalNet,
        *,
        meta: dict[str, Any] | None = None,
        threshold: float = 0.5,
        batch_size: int = 256,
    ) -> None:
        self.net = net.eval()
        self.meta = dict(meta or {})
        self.threshold = threshold
        self.batch_size = batch_size
        self.input_size = int(self.meta.get("config", {}).get("input_size", INPUT_SIZE))

    @classmethod
    def load(cls, path: str | Path | None = None, *, threshold: float = 0.5, batch_size: int = 256) -> ShapeEval:
        """The shipped weights by default, or a `.safetensors` file (or a folder holding one) with its `.json`."""
        if path is None:
            folder = resources.files("ralu_bench") / "weights"
            weights = (folder / WEIGHTS_NAME).read_bytes()
            meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        else:
            file = Path(path)
            if file.is_dir():
                file = file / WEIGHTS_NAME
            weights = file.read_bytes()
            meta = json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))
        config = meta["config"]
        labels = [tuple(label.split()) for label in config["labels"]]
        if labels != list(LABELS):
            raise ValueError("weights were trained for a different label order than ralu_bench.shapeeval.LABELS")
        net = ShapeEvalNet(widths=config["widths"], num_labels=len(labels))
        state = {name: tensor.float() for name, tensor in safetensors.torch.load(weights).items()}
        net.load_state_dict(state)
        return cls(net, meta=meta, threshold=threshold, batch_size=batch_size)

    def _batches(self, images: Images) -> Iterator[torch.Tensor]:
        """Float (b, 3, size, size) batches in input order, converted and resized lazily to bound memory."""
        if isinstance(images, Image.Image):
            images = [images]
        step = self.batch_size
        if isinstance(images, torch.Tensor):
            tensor = images[None] if images.ndim == 3 else images
            if tensor.ndim != 4 or tensor.shape[1] != 3:
                raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(tensor.shape)}")
            tensor = tensor.detach().cpu()
            for start in range(0, tensor.shape[0], step):
                chunk = tensor[start : start + step]
                chunk = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
                yield resize(chunk, self.input_size)
        elif isinstance(images, np.ndarray):
            array = images[None] if images.ndim == 3 else images
            if array.ndim != 4 or array.shape[-1] != 3:
                raise ValueError(f"expected (B, H, W, 3) or (H, W, 3) images, got shape {images.shape}")
            for start in range(0, array.shape[0], step):
                yield resize(_hwc_to_float(array[start : start + step]), self.input_size)
        else:
            items = list(images)
            for start in range(0, len(items), step):
                yield torch.cat([resize(_as_chw(item)[None], self.input_size) for item in items[start : start + step]])

    def probabilities(self, images: Images) -> torch.Tensor:
        """(B, 32) presence probabilities, columns in LABELS order."""
        with torch.no_grad():
            out = [torch.sigmoid(self.net(batch)) for batch in self._batches(images)]
        return torch.cat(out) if out else torch.zeros(0, len(LABELS))

    def predict(self, images: Images) -> list[frozenset[tuple[str, str]]]:
        """The set of (colour, kind) pairs each image shows."""
        present = self.probabilities(images) > self.threshold
        return [frozenset(label for label, on in zip(LABELS, row.tolist(), strict=True) if on) for row in present]

    def accuracy(self, images: Images, captions: Sequence[str]) -> float:
        """Fraction of images whose predicted set equals exactly the set their caption names."""
        predicted = self.predict(images)
        if len(predicted) != len(captions):
            raise ValueError(f"{len(predicted)} images but {len(captions)} captions")
        if not predicted:
            raise ValueError("accuracy of no images is undefined")
        hits = sum(pred == parse_caption(caption) for pred, caption in zip(predicted, captions, strict=True))
        return hits / len(predicted)
