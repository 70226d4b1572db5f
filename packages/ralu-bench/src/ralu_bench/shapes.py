"""A procedural text-to-image data set of flat coloured shapes, deterministic from a seed.

No real weights can be downloaded here, so ralu trains small reference models on data it can make
itself. The images are the hard case for RALU: one to three flat shapes in distinct colours with
sharp edges (where half-resolution denoising aliases) on a plain or gradient background, and the
captions name every shape's colour, kind and position, so a classifier can check text alignment.

Scene i of a data set with seed s is a pure function of (s, i): indexing is random access and
reproducible across processes and machines (numpy's PCG64 and integer geometry; rendering is
supersampled with a fixed box filter).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import attrs
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 70),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (240, 120, 190),
}
"""Shape colours, far apart in RGB so that a classifier and a viewer can tell them apart."""

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (150, 150, 150),
    "black": (25, 25, 25),
}
"""Neutral backgrounds; a gradient runs between two of them."""

POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
"""Caption words for the cell of a 3 x 3 grid holding a shape's centre."""

CAPTION_WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            *COLOURS,
            *KINDS,
            *BACKGROUNDS,
            "a",
            "an",
            "and",
            "at",
            "in",
            "on",
            "the",
            "background",
            "gradient",
            "from",
            "to",
            "top",
            "bottom",
            "left",
            "right",
            "center",
        }
    )
)
"""Every word a caption can contain: the reference models' tokenizers are built from it."""


@attrs.frozen(kw_only=True)
class Shape:
    kind: str
    colour: str
    centre: tuple[float, float]
    """(row, col) as fractions of the image side, in [0, 1]."""
    radius: float
    """Half the shape's extent, as a fraction of the image side."""

    @property
    def position(self) -> str:
        row = min(int(self.centre[0] * 3), 2)
        col = min(int(self.centre[1] * 3), 2)
        return POSITIONS[row][col]

    @property
    def label(self) -> tuple[str, str]:
        return self.colour, self.kind


@attrs.frozen(kw_only=True)
class Scene:
    background: tuple[str, ...]
    """One colour name (plain) or two (a vertical gradient from the first at the top to the second)."""
    shapes: tuple[Shape, ...]

    def caption(self) -> str:
        """E.g. "a red circle at the top left and a blue square in the center on a white background"."""
        parts = []
        for shape in self.shapes:
            where = "in the center" if shape.position == "center" else f"at the {shape.position}"
            article = "an" if shape.colour[0] in "aeiou" else "a"
            parts.append(f"{article} {shape.colour} {shape.kind} {where}")
        if len(self.background) == 1:
            ground = f"on a {self.background[0]} background"
        else:
            ground = f"on a gradient background from {self.background[0]} to {self.background[1]}"
        return f"{' and '.join(parts)} {ground}"

    @property
    def labels(self) -> frozenset[tuple[str, str]]:
        return frozenset(shape.label for shape in self.shapes)


def sample_scene(rng: np.random.Generator, *, max_shapes: int = 3) -> Scene:
    """A random scene: 1..max_shapes shapes of distinct colours, in distinct 3 x 3 cells, not touching."""
    names = list(BACKGROUNDS)
    if rng.random() < 0.5:
        background: tuple[str, ...] = (names[rng.integers(len(names))],)
    else:
        first, second = rng.choice(len(names), size=2, replace=False)
        background = (names[first], names[second])
    count = int(rng.integers(1, max_shapes + 1))
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    cells = rng.choice(9, size=count, replace=False)
    shapes = []
    for colour, cell in zip(colours, cells, strict=True):
        row, col = divmod(int(cell), 3)
        # Radius <= 0.13 and jitter <= 0.02 of the side keep adjacent centres >= 0.29 apart (diagonal
        # neighbours >= 0.41, more than two square half-diagonals), and every shape inside the image.
        radius = float(rng.uniform(0.08, 0.13))
        centre = ((row + 0.5) / 3 + float(rng.uniform(-0.02, 0.02)), (col + 0.5) / 3 + float(rng.uniform(-0.02, 0.02)))
        shapes.append(
            Shape(
                kind=KINDS[int(rng.integers(len(KINDS)))],
                colour=list(COLOURS)[int(colour)],
                centre=centre,
                radius=radius,
            )
        )
    return Scene(background=background, shapes=tuple(shapes))


def _outline(shape: Shape, size: int) -> list[tuple[float, float]]:
    cy, cx = shape.centre[0] * size, shape.centre[1] * size
    r = shape.radius * size
    if shape.kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape.kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)]
    if shape.kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(f"no outline for {shape.kind!r}")


def render(scene: Scene, size: int = 128, *, supersample: int = 4) -> npt.NDArray[np.uint8]:
    """The scene as an (size, size, 3) uint8 RGB image; edges anti-aliased by box-filter supersampling."""
    big = size * supersample
    top = np.array(BACKGROUNDS[scene.background[0]], dtype=np.float64)
    bottom = np.array(BACKGROUNDS[scene.background[-1]], dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, big)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (big, big, 3)).round().astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(canvas))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        colour = COLOURS[shape.colour]
        if shape.kind == "circle":
            cy, cx, r = shape.centre[0] * big, shape.centre[1] * big, shape.radius * big
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_outline(shape, big), fill=colour)
    pixels = np.asarray(image, dtype=np.float64).reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return pixels.round().astype(np.uint8)


@attrs.frozen(kw_only=True)
class Sample:
    image: npt.NDArray[np.uint8]
    caption: str
    scene: Scene


@attrs.frozen(kw_only=True)
class ShapesDataset(Sequence[Sample]):
    """`length` scenes of `size` x `size` pixels; scene i depends only on (seed, i)."""

    seed: int = 0
    length: int = 10_000
    size: int = 128
    max_shapes: int = 3

    SPLIT_OFFSETS: ClassVar[dict[str, int]] = {"train": 0, "heldout": 1_000_003}

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} outside a data set of {self.length}")
        rng = np.random.Generator(np.random.PCG64([self.seed, index]))
        return sample_scene(rng, max_shapes=self.max_shapes)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        scene = self.scene(index)
        return Sample(image=render(scene, self.size), caption=scene.caption(), scene=scene)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(self.length))

    @classmethod
    def split(cls, name: str, *, seed: int = 0, length: int = 10_000, size: int = 128) -> ShapesDataset:
        """`train` or `heldout`: disjoint seeds derived from one base seed."""
        if name not in cls.SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(cls.SPLIT_OFFSETS)}, got {name!r}")
        return cls(seed=seed + cls.SPLIT_OFFSETS[name], length=length, size=size)
