"""Train ralu's FLUX- and SD3-architecture reference models on the procedural shapes data set, on a CPU.

Why: no real weights can be downloaded here, yet RALU's quality claims need models whose images mean
something. This script trains them from scratch in stages, each its own artifact:

* ``--stage vae``: an AutoencoderKL (factor 4) on the shapes images, then its ``scaling_factor`` /
  ``shift_factor`` from the latents' statistics (as FLUX's VAE: normalised latents have unit variance).
  Saved to OUT/vae; the SD3-architecture reference model reuses it.
* ``--stage flux``: a FluxTransformer2DModel trained with rectified flow on cached VAE latents and
  cached features of the frozen random CLIP/T5 encoders (from the pipeline's own ``encode_prompt``);
  saved as a whole ``FluxPipeline`` to OUT/flux (``FluxPipeline.from_pretrained(OUT/flux)`` loads it
  offline). A quarter of the steps use 64 px versions of the scenes (8 x 8 tokens, RoPE positions
  0..7): real FLUX is trained at several resolutions, and RALU's first stage runs exactly that grid.
  No flips: captions name left and right.
* ``--stage sd3``: the same for an SD3Transformer2DModel (SD3.5-style q/k RMSNorm) with two frozen
  random projected CLIP encoders and T5, saved as a whole ``StableDiffusion3Pipeline`` to OUT/sd3.
  The training loop is shared; only the latent layout, text features and model call differ
  (:class:`Family`).
* ``--stage vae flux`` runs several stages, rendering the data set once; ``--stage all`` runs all three.

Each stage stops at its step limit or its time budget, whichever comes first: fix the steps for a
reproducible run (the time budget is a safety cap); given the seed, the data order, noise and weights
are deterministic on one machine and thread count. Each stage writes a ``training.json`` with the exact
command, seed, versions, wall-clock, steps and losses. See the README next to this script.

Everything runs on the CPU unless ``--device`` names another torch device (e.g. ``cuda``). Random draws
(data order, noise, caption dropout) always come from CPU generators and are moved to the device, so a
seed selects the same batches on any device; only floating-point results differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from ralu_bench.reference import (
    ReferenceConfig,
    assemble_flux_pipeline,
    assemble_sd3_pipeline,
    render_images,
    shifted_sigma,
    untrained_components,
)
from ralu_bench.shapes import ShapesDataset

SCRIPT = "packages/ralu-bench/scripts/train_reference.py"


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    defaults = ReferenceConfig()
    p.add_argument(
        "--stage",
        nargs="+",
        choices=("vae", "flux", "sd3", "all"),
        default=["all"],
        help="stages to run, in the order vae, flux, sd3 ('all': every one); flux and sd3 need OUT/vae",
    )
    p.add_argument("--out", type=Path, required=True, help="writes OUT/vae, OUT/flux and OUT/sd3")
    p.add_argument("--seed", type=int, default=0, help="model init, data order, noise")
    p.add_argument("--data-seed", type=int, default=0, help="seed of ShapesDataset.split('train')")
    p.add_argument("--train-size", type=int, default=12_000, help="training scenes (rendered once)")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on (e.g. cuda); random draws stay on the CPU, so a seed gives the same\n"
        "data order, noise and initial weights on any device",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the data set")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast in training")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-images", type=int, default=64, help="held-out images for VAE PSNR and samples")
    vae = p.add_argument_group("VAE stage")
    vae.add_argument("--vae-minutes", type=float, default=12.0, help="time budget of the training loop")
    vae.add_argument("--vae-steps", type=int, default=2500, help="step limit (sets the LR schedule)")
    vae.add_argument("--vae-batch-size", type=int, default=8)
    vae.add_argument(
        "--vae-crop",
        type=int,
        default=128,
        help="random crops; keep whole images: GroupNorm statistics of 64 px crops do not carry over to 128 px",
    )
    vae.add_argument("--vae-lr", type=float, default=2e-3)
    vae.add_argument("--vae-mse-weight", type=float, default=4.0, help="x MSE: pulls the rare shape pixels' colour in")
    vae.add_argument("--vae-kl-weight", type=float, default=1e-6, help="x mean KL per latent element")
    vae.add_argument("--vae-edge-weight", type=float, default=1.0, help="x L1 of image-gradient differences")
    vae.add_argument("--vae-initial-logvar", type=float, default=-6.0, help="encoder's initial log-variance")
    vae.add_argument("--stats-images", type=int, default=2048, help="images for the latent scale/shift")
    flux = p.add_argument_group("transformer stages (FLUX and SD3; the options after the step limits are shared)")
    flux.add_argument("--flux-minutes", type=float, default=42.0, help="time budget of the FLUX training loop")
    flux.add_argument("--flux-steps", type=int, default=7000, help="FLUX step limit (sets the LR schedule)")
    flux.add_argument("--sd3-minutes", type=float, default=42.0, help="time budget of the SD3 training loop")
    flux.add_argument("--sd3-steps", type=int, default=7000, help="SD3 step limit (sets the LR schedule)")
    flux.add_argument(
        "--attention-heads",
        type=int,
        default=defaults.num_attention_heads,
        help=f"transformer width in heads of {defaults.attention_head_dim} channels (both families)",
    )
    flux.add_argument("--batch-size", type=int, default=16)
    flux.add_argument("--lr", type=float, default=2e-3)
    flux.add_argument("--weight-decay", type=float, default=0.01)
    flux.add_argument("--warmup-steps", type=int, default=100)
    flux.add_argument("--ema-decay", type=float, default=0.999, help="0 disables the EMA of weights")
    flux.add_argument("--caption-dropout", type=float, default=0.1, help="empty prompt, for true CFG")
    flux.add_argument("--lowres-fraction", type=float, default=0.25, help="steps on 64 px images (8 x 8 tokens)")
    flux.add_argument("--timesteps", choices=("shifted-uniform", "shifted-logit-normal"), default="shifted-uniform")
    flux.add_argument(
        "--save-dtype",
        choices=("float32", "float16"),
        default="float16",
        help="transformer weights on disk (from_pretrained loads them as float32 either way)",
    )
    flux.add_argument("--samples", type=int, default=8, help="held-out captions drawn into OUT/samples-{flux,sd3}.png")
    flux.add_argument("--sample-steps", type=int, default=28)
    flux.add_argument(
        "--cfg", type=float, default=4.0, help="CFG scale of the samples (true_cfg_scale / guidance_scale)"
    )
    return p.parse_args(argv)


# --- helpers ----------------------------------------------------------------------------------------


def to_tensor(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> npt.NDArray[np.uint8]:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def autocast(enabled: bool, device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% at the step limit (a time-capped run stops earlier)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def save_grid(images: npt.NDArray[np.uint8], path: Path, columns: int = 8) -> None:
    rows = math.ceil(len(images) / columns)
    h, w = images.shape[1:3]
    grid = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    Image.fromarray(grid).save(path)


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def command(argv: Sequence[str]) -> str:
    return shlex.join(["python", SCRIPT, *argv])


class Progress:
    """Step counter with a time budget and a running loss, logging steps/s."""

    def __init__(self, name: str, max_steps: int, minutes: float, log_every: int) -> None:
        self.name, self.max_steps, self.budget_s, self.log_every = name, max_steps, minutes * 60, log_every
        self.start = time.perf_counter()
        self.step = 0
        self.smoothed: float | None = None
        self.last_log = (self.start, 0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def running(self) -> bool:
        return self.step < self.max_steps and self.elapsed() < self.budget_s

    def stopped_by(self) -> str:
        return "steps" if self.step >= self.max_steps else "time"

    def update(self, loss: float, **extra: float) -> None:
        self.step += 1
        self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
        if self.step % self.log_every == 0 or self.step == 1:
            now = time.perf_counter()
            rate = (self.step - self.last_log[1]) / max(now - self.last_log[0], 1e-9)
            self.last_log = (now, self.step)
            details = " ".join(f"{k} {v:.4g}" for k, v in extra.items())
            print(
                f"[{self.name}] step {self.step}/{self.max_steps} loss {loss:.4f} (smoothed {self.smoothed:.4f}) "
                f"{rate:.2f} steps/s {self.elapsed():.0f}s {details}",
                flush=True,
            )

    def summary(self) -> dict[str, Any]:
        loop_s = self.elapsed()
        return {
            "steps": self.step,
            "stopped_by": self.stopped_by(),
            "loop_seconds": round(loop_s, 1),
            "steps_per_second": round(self.step / max(loop_s, 1e-9), 3),
            "final_loss_smoothed": self.smoothed,
        }


def training_data(args: argparse.Namespace, config: ReferenceConfig) -> tuple[ShapesDataset, npt.NDArray[np.uint8]]:
    dataset = ShapesDataset.split("train", seed=args.data_seed, length=args.train_size, size=config.image_size)
    start = time.perf_counter()
    images = render_images(dataset, workers=args.workers)
    print(f"[data] rendered {len(images)} images in {time.perf_counter() - start:.1f}s", flush=True)
    return dataset, images


@torch.no_grad()
def encode(vae: Any, images: npt.NDArray[np.uint8], batch: int = 64) -> torch.Tensor:
    """Posterior means (fp32, no autocast: the cache must match what the decoder sees at inference)."""
    return torch.cat(
        [
            vae.encode(to_tensor(images[i : i + batch]).to(vae.device)).latent_dist.mode()
            for i in range(0, len(images), batch)
        ]
    )


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([vae.decode(latents[i : i + batch]).sample.cpu() for i in range(0, len(latents), batch)])


# --- VAE stage --------------------------------------------------------------------------------------


def train_vae(args: argparse.Namespace, config: ReferenceConfig, images: npt.NDArray[np.uint8]) -> dict[str, Any]:
    """Reconstruction (L1 + edge L1) + small KL on random crops; then latent scale/shift; save OUT/vae."""
    stage_start = time.perf_counter()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    vae: Any = untrained_components(config, modules=("vae",))["vae"]
    with torch.no_grad():
        # Start the posterior narrow (std e^-3): from diffusers' init (std ~1) the latents drown in sampling
        # noise and the encoder spends hundreds of steps inflating its means; shape colours come last.
        channels = vae.config.latent_channels
        vae.encoder.conv_out.bias[channels:] = args.vae_initial_logvar
    vae.to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed * 1000 + 1)
    crop, size = args.vae_crop, config.image_size
    progress = Progress("vae", args.vae_steps, args.vae_minutes, args.log_every)
    while progress.running():
        index = torch.randint(len(images), (args.vae_batch_size,), generator=generator)
        top, left = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=generator))
        x = to_tensor(images[index.numpy()][:, top : top + crop, left : left + crop])
        flips, turns = (int(v) for v in torch.randint(4, (2,), generator=generator))
        # No captions here, so flips and right-angle turns are free augmentation.
        x = torch.rot90(x.flip(-1) if flips & 1 else x, turns, dims=(-2, -1)).to(device)
        for group in optimiser.param_groups:
            group["lr"] = args.vae_lr * lr_factor(progress.step, 100, args.vae_steps)
        with autocast(args.bf16, device):
            posterior = vae.encode(x).latent_dist
            # diffusers draws this noise with the CPU generator and moves it to the device.
            recon = vae.decode(posterior.sample(generator=generator)).sample.float()
        l1 = (recon - x).abs().mean()
        edge = sum(((recon.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (-1, -2)), start=torch.zeros(()))
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()
        mse = (recon - x).pow(2).mean()
        loss = l1 + args.vae_mse_weight * mse + args.vae_edge_weight * edge + args.vae_kl_weight * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        progress.update(loss.item(), l1=l1.item(), edge=edge.item(), kl=kl.item())
    summary = progress.summary()
    vae.eval()
    torch.set_grad_enabled(False)
    latents = encode(vae, images[: args.stats_images])
    shift, std = float(latents.mean()), float(latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    heldout = ShapesDataset.split("heldout", seed=args.data_seed, length=args.eval_images, size=size)
    originals = render_images(heldout)
    decoded = to_uint8(decode(vae, encode(vae, originals)))
    posterior_std = float(vae.encode(to_tensor(originals[:8]).to(device)).latent_dist.std.mean())
    torch.set_grad_enabled(True)
    out = args.out / "vae"
    vae.to("cpu").save_pretrained(out)
    save_grid(np.concatenate([originals[:8], decoded[:8]]), args.out / "samples-vae.png")
    summary.update(
        wall_seconds=round(time.perf_counter() - stage_start, 1),
        latent_shift_factor=shift,
        latent_scaling_factor=1.0 / std,
        latent_channel_std=[float(v) for v in latents.std(dim=(0, 2, 3))],
        posterior_std=posterior_std,
        heldout_psnr=round(float(np.mean([psnr(a, b) for a, b in zip(originals, decoded, strict=True)])), 2),
        parameters=sum(p.numel() for p in vae.parameters()),
    )
    print(f"[vae] {summary}", flush=True)
    return summary


# --- transformer stages (FLUX, SD3) -----------------------------------------------------------------


def normalise(latents: torch.Tensor, vae: Any) -> torch.Tensor:
    """As the pipelines do before the transformer: ``(z - shift_factor) * scaling_factor``."""
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def downsample(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """2 x 2 box filter: a 64 px rendering of the same scenes (an 8x-supersampled box, like render's 4x)."""
    n, h, w, c = images.shape
    small = images.reshape(n, h // 2, 2, w // 2, 2, c).astype(np.float32).mean(axis=(2, 4))
    return np.asarray(small.round(), dtype=np.uint8)


def image_ids(side: int, device: torch.device) -> torch.Tensor:
    ids: torch.Tensor = FluxPipeline._prepare_latent_image_ids(1, side, side, device, torch.float32)
    return ids


def sample_sigmas(kind: str, count: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Training noise levels. ``shifted-uniform`` (default): u ~ U(0, 1) through the sampler's own shift
    (sigma = 3u / (1 + 2u)), so each noise level is trained as often as the Euler sampler visits it.
    ``shifted-logit-normal``: SD3's logit-normal u, then the same shift (more weight on mid noise)."""
    if kind == "shifted-uniform":
        u = torch.rand(count, generator=generator)
    else:
        u = torch.sigmoid(torch.randn(count, generator=generator))
    return shifted_sigma(u, shift)


class Family:
    """What differs between the FLUX and SD3 stages; the training loop itself is shared."""

    name: str
    pipeline_class: Any
    cfg_argument: str
    """The pipeline's classifier-free guidance argument."""

    def pipeline(self, config: ReferenceConfig, vae: Any) -> Any:
        raise NotImplementedError

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised VAE latents (N, C, h, w) -> the transformer's input layout."""
        raise NotImplementedError

    def text(self, pipe: Any, captions: list[str], length: int) -> tuple[torch.Tensor, ...]:
        """Per-caption text features from the pipeline's own ``encode_prompt`` (first dim: captions)."""
        raise NotImplementedError

    def predict(
        self, transformer: Any, x_t: torch.Tensor, sigma: torch.Tensor, text: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The velocity prediction, called exactly as the pipeline calls the transformer."""
        raise NotImplementedError


class FluxFamily(Family):
    name, pipeline_class, cfg_argument = "flux", FluxPipeline, "true_cfg_scale"

    def pipeline(self, config: ReferenceConfig, vae: Any) -> Any:
        components = untrained_components(config, modules=("transformer", "text_encoder", "text_encoder_2"))
        return assemble_flux_pipeline({**components, "vae": vae})

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape  # 2 x 2 latent pixels per token
        packed: torch.Tensor = FluxPipeline._pack_latents(latents, b, c, h, w)
        return packed

    def text(self, pipe: Any, captions: list[str], length: int) -> tuple[torch.Tensor, ...]:
        embeds, pooled, _ = pipe.encode_prompt(captions, prompt_2=None, max_sequence_length=length)
        return embeds, pooled

    def predict(
        self, transformer: Any, x_t: torch.Tensor, sigma: torch.Tensor, text: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        embeds, pooled = text
        pred: torch.Tensor = transformer(
            hidden_states=x_t,
            timestep=sigma,  # the pipeline passes t / 1000 = sigma; the model multiplies by 1000
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x_t.device),  # as encode_prompt: text at position 0
            img_ids=image_ids(math.isqrt(x_t.shape[1]), x_t.device),
            return_dict=False,
        )[0]
        return pred


class SD3Family(Family):
    name, pipeline_class, cfg_argument = "sd3", StableDiffusion3Pipeline, "guidance_scale"

    def pipeline(self, config: ReferenceConfig, vae: Any) -> Any:
        modules = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
        components = untrained_components(config, modules=modules, architecture="sd3")
        return assemble_sd3_pipeline({**components, "vae": vae})

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        return latents  # SD3 patchifies inside the transformer

    def text(self, pipe: Any, captions: list[str], length: int) -> tuple[torch.Tensor, ...]:
        embeds, _, pooled, _ = pipe.encode_prompt(
            captions, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, max_sequence_length=length
        )
        return embeds, pooled

    def predict(
        self, transformer: Any, x_t: torch.Tensor, sigma: torch.Tensor, text: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        embeds, pooled = text
        pred: torch.Tensor = transformer(
            hidden_states=x_t,
            timestep=sigma * 1000,  # SD3's pipeline passes the scheduler's timestep, sigma * 1000
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return pred


FAMILIES: dict[str, Family] = {"flux": FluxFamily(), "sd3": SD3Family()}


def flow_loss(
    family: Family,
    transformer: Any,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    text: tuple[torch.Tensor, ...],
    bf16: bool,
) -> torch.Tensor:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise, and the model predicts v = noise - x0."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * noise
    with autocast(bf16, x0.device):
        pred = family.predict(transformer, x_t, sigma, text)
    return F.mse_loss(pred.float(), noise - x0)


def train_transformer(
    args: argparse.Namespace,
    config: ReferenceConfig,
    dataset: ShapesDataset,
    images: npt.NDArray[np.uint8],
    family: Family,
) -> dict[str, Any]:
    """Train the family's transformer on cached latents and text features; save the whole pipeline."""
    stage_start = time.perf_counter()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    vae: Any = AutoencoderKL.from_pretrained(args.out / "vae").eval()  # type: ignore[no-untyped-call]
    pipe: Any = family.pipeline(config, vae).to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    captions = [dataset.scene(i).caption() for i in range(len(dataset))]

    start = time.perf_counter()
    cache = {
        "full": family.layout(normalise(encode(vae, images), vae)),
        "low": family.layout(normalise(encode(vae, downsample(images)), vae)),
    }
    # Captions are (nearly) all distinct, so text features are cached per sample, in the pipeline's own
    # encode_prompt at the training length; index len(captions) holds the empty prompt (caption dropout).
    length = config.max_sequence_length
    with torch.no_grad():
        parts = [family.text(pipe, [*captions, ""][i : i + 256], length) for i in range(0, len(captions) + 1, 256)]
    text = tuple(torch.cat(column) for column in zip(*parts, strict=True))
    print(
        f"[{family.name}] cached latents {tuple(cache['full'].shape)} + {tuple(cache['low'].shape)} and text "
        f"features {[tuple(t.shape) for t in text]} in {time.perf_counter() - start:.1f}s",
        flush=True,
    )

    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params] if args.ema_decay > 0 else None
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(args.seed * 1000 + 2)
    max_steps, minutes = getattr(args, f"{family.name}_steps"), getattr(args, f"{family.name}_minutes")

    progress = Progress(family.name, max_steps, minutes, args.log_every)
    while progress.running():
        grid = "low" if float(torch.rand((), generator=generator)) < args.lowres_fraction else "full"
        index = torch.randint(len(captions), (args.batch_size,), generator=generator)
        drop = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
        x0 = cache[grid][index.to(device)]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigma = sample_sigmas(args.timesteps, args.batch_size, config.shift, generator).to(device)
        for group in optimiser.param_groups:
            group["lr"] = args.lr * lr_factor(progress.step, args.warmup_steps, max_steps)
        rows = torch.where(drop, len(captions), index).to(device)
        loss = flow_loss(family, transformer, x0, sigma, noise, tuple(t[rows] for t in text), args.bf16)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # (torch leaves Tensor.backward unannotated)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if ema is not None:
            decay = min(args.ema_decay, (1 + progress.step) / (10 + progress.step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 1 - decay)
        progress.update(loss.item(), grad_norm=grad_norm.item())
    summary = progress.summary()
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
    transformer.eval()
    summary["heldout_loss"] = heldout_loss(args, config, pipe, family)

    out = args.out / family.name
    pipe.to("cpu")
    if args.save_dtype == "float16":
        torch.nn.Module.to(transformer, torch.float16)  # ModelMixin.to warns about fp32-pinned modules; none here
    pipe.save_pretrained(out)
    summary.update(
        wall_seconds_training=round(time.perf_counter() - stage_start, 1),
        parameters=sum(p.numel() for p in transformer.parameters()),
        max_sequence_length=length,
    )
    summary["samples"] = draw_samples(args, config, family)
    summary["wall_seconds"] = round(time.perf_counter() - stage_start, 1)
    print(f"[{family.name}] { {k: v for k, v in summary.items() if k != 'samples'} }", flush=True)
    return summary


@torch.no_grad()
def heldout_loss(args: argparse.Namespace, config: ReferenceConfig, pipe: Any, family: Family) -> float:
    """Mean loss on held-out scenes at 4 fixed noise levels with fixed noise: comparable across runs."""
    heldout = ShapesDataset.split("heldout", seed=args.data_seed, length=args.eval_images, size=config.image_size)
    x0 = family.layout(normalise(encode(pipe.vae, render_images(heldout)), pipe.vae))
    text = family.text(pipe, [s.caption for s in heldout], config.max_sequence_length)
    generator = torch.Generator().manual_seed(12345)
    losses = []
    for sigma in (0.25, 0.5, 0.75, 0.9):
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        sigmas = torch.full((len(x0),), sigma, device=x0.device)
        losses.append(float(flow_loss(family, pipe.transformer, x0, sigmas, noise, text, args.bf16)))
    return float(np.mean(losses))


def recommended_call(args: argparse.Namespace, config: ReferenceConfig, family: Family) -> dict[str, Any]:
    """How the trained pipeline should be called (recorded in training.json)."""
    return {
        "height": config.image_size,
        "width": config.image_size,
        "max_sequence_length": config.max_sequence_length,
        "negative_prompt": "",
        family.cfg_argument: args.cfg,
        "num_inference_steps": args.sample_steps,
    }


def draw_samples(args: argparse.Namespace, config: ReferenceConfig, family: Family) -> list[str]:
    """Reload the saved pipeline as a user would (float32) and draw held-out captions: a load check too."""
    if args.samples <= 0:
        return []
    pipe: Any = family.pipeline_class.from_pretrained(args.out / family.name, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    heldout = ShapesDataset.split("heldout", seed=args.data_seed, length=args.samples, size=config.image_size)
    captions = [heldout.scene(i).caption() for i in range(args.samples)]
    call = recommended_call(args, config, family)
    call["negative_prompt"] = [call["negative_prompt"]] * len(captions)
    images = pipe(captions, **call, generator=torch.Generator().manual_seed(0), output_type="np").images
    drawn = (np.asarray(images) * 255).round().astype(np.uint8)
    save_grid(np.concatenate([render_images(heldout), drawn]), args.out / f"samples-{family.name}.png")
    return captions


# --- main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ReferenceConfig(seed=args.seed, num_attention_heads=args.attention_heads)
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": command(argv),
        "seed": args.seed,
        "data": {"split": "train", "data_seed": args.data_seed, "train_size": args.train_size},
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": config.to_dict(),
        "versions": versions(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": os.getloadavg(),
            "device": args.device,
            "accelerator": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
        },
    }
    start = time.perf_counter()
    dataset, images = training_data(args, config)
    record["data"]["render_seconds"] = round(time.perf_counter() - start, 1)
    vae_summary = None
    stages = {"vae", "flux", "sd3"} if "all" in args.stage else set(args.stage)
    if "vae" in stages:
        vae_summary = train_vae(args, config, images)
        record["vae"] = vae_summary
        (args.out / "vae" / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    for name, family in FAMILIES.items():
        if name not in stages:
            continue
        if vae_summary is None:
            vae_record = args.out / "vae" / "training.json"
            if vae_record.exists():
                record["vae"] = json.loads(vae_record.read_text()).get("vae")
        record[name] = train_transformer(args, config, dataset, images, family)
        own = {key: value for key, value in record.items() if key not in FAMILIES or key == name}
        own["recommended_call"] = recommended_call(args, config, family)
        (args.out / name / "training.json").write_text(json.dumps(own, indent=2) + "\n")
    record["wall_seconds_total"] = round(time.perf_counter() - start, 1)
    print(f"[done] {record['wall_seconds_total']}s, wrote {args.out}", flush=True)
    return record


if __name__ == "__main__":
    main()
