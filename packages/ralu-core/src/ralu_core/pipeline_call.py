"""What every adapter of a diffusers pipeline shares: VAE decoding, output handling, progress bars.

Both FluxPipeline and StableDiffusion3Pipeline undo the latent normalisation
(``latent / scaling_factor + shift_factor``), decode with an ``AutoencoderKL``, post-process with the
pipeline's image processor, free offloaded models and wrap the images in their own output class.
`DiffusersCall` does exactly that, generically, so an adapter's call only adds what is particular to
its model: prompt encoding, token layout and the transformer evaluation.
"""

from __future__ import annotations

import inspect
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from ralu_core.adapter import ModelCall, ProgressBar


def default_num_inference_steps(pipeline: Any) -> int:
    """The step count a pipeline uses when none is given (its ``__call__`` default)."""
    return int(inspect.signature(type(pipeline).__call__).parameters["num_inference_steps"].default)


class DiffusersCall(ModelCall):
    """A prepared call of a diffusers pipeline with an ``AutoencoderKL`` and an image processor.

    Subclasses set ``pipe``, ``output_type`` and ``return_dict``, and implement the model-specific part.
    """

    pipe: Any
    output_type: str | None
    return_dict: bool

    def vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Model latent -> VAE latent (undo the pipeline's normalisation), on the VAE's device and dtype."""
        vae = self.pipe.vae
        latent = latent / vae.config.scaling_factor + vae.config.shift_factor
        return latent.to(device=vae.device, dtype=vae.dtype)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.pipe.vae.decode(self.vae_latent(latent), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def pipeline_output(self, latent_image: torch.Tensor, latents: torch.Tensor, output_cls: Any) -> Any:
        """The pipeline's own output for the final latent image (``latents``: what output_type="latent" returns)."""
        if self.output_type == "latent":
            image: Any = latents
        else:
            decoded = self.pipe.vae.decode(self.vae_latent(latent_image), return_dict=False)[0]
            image = self.pipe.image_processor.postprocess(decoded, output_type=self.output_type)
        self.pipe.maybe_free_model_hooks()
        if not self.return_dict:
            return (image,)
        return output_cls(images=image)

    def progress_bar(self, total: int) -> AbstractContextManager[ProgressBar]:
        return self.pipe.progress_bar(total=total)  # type: ignore[no-any-return]


def read_component_configs(
    folder: str | Path, known: str, pipeline_class: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The transformer and VAE configs of a saved diffusers pipeline folder, for FLOPs counting.

    `known` lists the architecture names the caller also accepts, for the error message.
    """
    root = Path(folder)
    paths = [root / "transformer" / "config.json", root / "vae" / "config.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{str(folder)!r} is neither a known architecture ({known}) nor a {pipeline_class} folder "
            f"(missing {', '.join(missing)})"
        )
    transformer, vae = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    return transformer, vae
