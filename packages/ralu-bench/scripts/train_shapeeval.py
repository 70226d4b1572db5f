"""Train ShapeEval, the shipped shapes classifier, and write its weights and metadata into the package.

Runs on a 2-core CPU in a few minutes: scenes come from `ShapesDataset.split("train", seed=SEED)`,
rendered at 128 px in two worker processes and resized to 64 px with the same function `ShapeEval`
uses, so training sees exactly what evaluation sees. Blur, noise and colour jitter make the classifier
tolerate the soft edges and grain of generated images. Held-out exact-set accuracy is measured through
`ShapeEval.load` on the written files, so the recorded number is the one users get.

Usage (from the repository root): python packages/ralu-bench/scripts/train_shapeeval.py
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.torch
import torch
import torch.nn.functional as F

from ralu_bench.shapeeval import CONFIG_NAME, INPUT_SIZE, LABELS, WEIGHTS_NAME, ShapeEval, ShapeEvalNet, resize
from ralu_bench.shapes import ShapesDataset

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "ralu_bench" / "weights"
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


def _render_chunk(args: tuple[str, int, int, int, int]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Images and multi-hot targets of scenes [start, stop) of one split; a worker-process task."""
    split, seed, length, start, stop = args
    data = ShapesDataset.split(split, seed=seed, length=length)
    images = np.stack([data[i].image for i in range(start, stop)])
    targets = np.zeros((stop - start, len(LABELS)), dtype=np.float32)
    for row, i in enumerate(range(start, stop)):
        for label in data.scene(i).labels:
            targets[row, LABEL_INDEX[label]] = 1.0
    return images, targets


def render_split(
    split: str, seed: int, length: int, workers: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """All of a split at its native 128 px; rendering is pure per index, so the pool does not change results."""
    chunk = 250
    tasks = [(split, seed, length, start, min(start + chunk, length)) for start in range(0, length, chunk)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_render_chunk, tasks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def to_input(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 (N, H, W, 3) to the network's (N, 3, 64, 64) float16 store, via the evaluation resize."""
    out = []
    for start in range(0, len(images), 512):
        chunk = torch.from_numpy(images[start : start + 512]).permute(0, 3, 1, 2).float() / 255.0
        out.append(resize(chunk, INPUT_SIZE).half())
    return torch.cat(out)


def augment(x: torch.Tensor, gen: torch.Generator, *, strength: float = 1.0) -> torch.Tensor:
    """Label-preserving corruptions resembling generated images: flip, blur, colour shift, noise."""
    b = x.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    # Horizontal flips keep every kind (the triangle points up either way); vertical ones would not.
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # Gaussian blur with a per-image sigma in [0, 1.2] px on half the images.
    sigma = uniform(0.0, 1.2 * strength, b) * (torch.rand(b, generator=gen) < 0.5)
    taps = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (b*3, 7)
    flat = x.reshape(1, b * 3, *x.shape[-2:])
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=b * 3)
    x = flat.reshape(x.shape)
    # Contrast, brightness and a mild per-channel gain: small enough to keep neighbouring colours apart.
    contrast = uniform(1 - 0.15 * strength, 1 + 0.15 * strength, b, 1, 1, 1)
    bright = uniform(-0.06 * strength, 0.06 * strength, b, 1, 1, 1)
    gain = uniform(1 - 0.06 * strength, 1 + 0.06 * strength, b, 3, 1, 1)
    x = ((x - 0.5) * contrast + 0.5 + bright) * gain
    # Pixel noise with std up to 0.05 on half the images.
    std = uniform(0.0, 0.05 * strength, b, 1, 1, 1) * (torch.rand(b, 1, 1, 1, generator=gen) < 0.5)
    x = x + std * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="data seed (train split) and torch seed")
    parser.add_argument("--train-size", type=int, default=16_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--heldout-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", sys.argv[0], *argv])

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    images, targets = render_split("train", args.seed, args.train_size, args.workers)
    train_x, train_y = to_input(images), torch.from_numpy(targets)
    del images
    held_images, held_targets = render_split("heldout", args.seed, args.heldout_size, args.workers)
    data_s = time.perf_counter() - started
    print(f"rendered {args.train_size} train + {args.heldout_size} held-out images in {data_s:.0f} s", flush=True)

    net = ShapeEvalNet(widths=args.widths)
    params = sum(p.numel() for p in net.parameters())
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.train_size / args.batch_size)
    total: int = steps_per_epoch * args.epochs
    warmup: int = max(1, total // 20)

    def schedule(step: int) -> float:
        """Linear warm-up then cosine decay to zero: stable with a high peak rate on few steps."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    evaluator = ShapeEval(net)
    log: list[dict[str, float]] = []
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(args.train_size, generator=gen)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            x = augment(train_x[idx].float(), gen)
            loss = F.binary_cross_entropy_with_logits(net(x), train_y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            scheduler.step()
            running += loss.item()
        net.eval()
        predicted = (evaluator.probabilities(held_images) > 0.5).numpy()
        exact = float((predicted == held_targets.astype(bool)).all(1).mean())
        elapsed = time.perf_counter() - started
        log.append({"epoch": epoch + 1, "loss": round(running / steps_per_epoch, 5), "heldout_exact": exact})
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {running / steps_per_epoch:.4f} "
            f"held-out exact {exact:.4f} ({elapsed:.0f} s)",
            flush=True,
        )
    train_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / WEIGHTS_NAME
    state = {name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}
    safetensors.torch.save_file(state, str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates the file owner-only; it ships to everyone
    meta: dict[str, Any] = {
        "config": {
            "widths": list(args.widths),
            "input_size": INPUT_SIZE,
            "labels": [" ".join(label) for label in LABELS],
        },
        "parameters": params,
        "seed": args.seed,
        "command": command,
        "train_split": f'ShapesDataset.split("train", seed={args.seed}, length={args.train_size})',
        "train_size": args.train_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "wall_clock_s": round(train_s, 1),
        "wall_clock_rendering_s": round(data_s, 1),
        "epoch_log": log,
    }
    (args.out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    # Measure through the public loader on the written files, exactly as users will.
    shipped = ShapeEval.load(weights_path)
    heldout = ShapesDataset.split("heldout", seed=args.seed, length=args.heldout_size)
    held_captions = [heldout.scene(i).caption() for i in range(args.heldout_size)]
    accuracy = shipped.accuracy(held_images, held_captions)
    blurred = augment(to_input(held_images).float(), torch.Generator().manual_seed(1))
    accuracy_augmented = shipped.accuracy(blurred, held_captions)
    meta["heldout"] = f'ShapesDataset.split("heldout", seed={args.seed}, length={args.heldout_size})'
    meta["heldout_exact_set_accuracy"] = accuracy
    meta["heldout_exact_set_accuracy_augmented"] = accuracy_augmented
    meta["notes"] = (
        "wall_clock_s covers rendering and training; the augmented accuracy runs the same held-out images through"
        " the training augmentation (blur, colour jitter, noise; generator seed 1)"
    )
    meta["wall_clock_total_s"] = round(time.perf_counter() - started, 1)
    (args.out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(
        f"{params} parameters; held-out exact-set accuracy {accuracy:.4f} "
        f"(augmented {accuracy_augmented:.4f}); trained in {train_s:.0f} s; wrote {weights_path}",
        flush=True,
    )


if __name__ == "__main__":
    main()
