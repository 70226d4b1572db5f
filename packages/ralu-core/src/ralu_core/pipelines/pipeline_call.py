"""What every call of a diffusers pipeline shares: VAE decoding and output handling (`DiffusersImages`),
and the lifecycle of the cache hooks on the transformer (`DiffusersHooks`, a call part).

Both FluxPipeline and StableDiffusion3Pipeline undo the latent normalisation
(``latent / scaling_factor + shift_factor``), decode with an ``AutoencoderKL``, post-process with the
pipeline's image processor, free offloaded models and wrap the images in their own output class.
`DiffusersImages` does exactly that, generically, so an adapter's call only adds what is particular to
its model: prompt encoding, token layout and the transformer evaluation.

diffusers' cache hooks (first-block, TaylorSeer, MagCache, FasterCache, pyramid attention broadcast)
keep state per named cache context and assume one token set per call. Here every transformer
evaluation runs in a named context (one per CFG branch and per group of images evaluated together),
told the step it serves, and the hooks' state is dropped whenever the token set changes and when
the call ends, so a hook never compares tensors of two token sets, branches or image groups.
"""

from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ralu_core.pipelines.diffusers_private import (
    drop_hook_registry,
    hook_registry,
    named_cache_context,
    refresh_child_registries,
)
from ralu_core.strategies.base import StageInfo, StepInfo


def default_num_inference_steps(pipeline: Any) -> int:
    """The step count a pipeline uses when none is given (its ``__call__`` default)."""
    return int(inspect.signature(type(pipeline).__call__).parameters["num_inference_steps"].default)


class DiffusersHooks:
    """A call part: the lifecycle of the diffusers hooks on the pipeline's transformer (the caches a user
    enabled, or a recipe's block-level cache), and the current timestep diffusers' callbacks read."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.hooked = False
        self.tells_timestep = isinstance(getattr(type(pipe), "current_timestep", None), property)

    def begin_stage(self, stage: StageInfo) -> None:
        # Looked at again per stage: a cache limited to some stages hooks in at their start and out at their end.
        transformer = self.pipe.transformer
        self.hooked = has_diffusers_hooks(transformer)
        if self.hooked:
            refresh_hook_registries(transformer)
            reset_stateful_hooks(transformer)

    def nbytes(self) -> int:
        return 0

    @contextmanager
    def running(self) -> Iterator[None]:
        pipe, transformer = self.pipe, self.pipe.transformer
        had_registry = stateful_hook_registry(transformer) is not None
        self.hooked = has_diffusers_hooks(transformer)
        had_timestep = "_current_timestep" in vars(pipe)
        saved = getattr(pipe, "_current_timestep", None)
        if self.hooked:
            refresh_hook_registries(transformer)
            reset_stateful_hooks(transformer)
        try:
            yield
        finally:
            _CURRENT_TIMESTEPS.pop(pipe, None)
            _CURRENT_TIMESTEPS.pop(transformer, None)
            if had_timestep:
                pipe._current_timestep = saved
            elif "_current_timestep" in vars(pipe):
                del pipe._current_timestep
            reset_stateful_hooks(transformer)
            registry = stateful_hook_registry(transformer)
            if not had_registry and registry is not None and not registry.hooks:
                drop_hook_registry(transformer)  # diffusers added it for the contexts; leave the model as it was

    def context(self, name: str, step: StepInfo | None, timestep: torch.Tensor) -> AbstractContextManager[None]:
        """Around one transformer evaluation: the current timestep (what diffusers' timestep callbacks read:
        ``pipe.current_timestep`` where the pipeline has it, `current_timestep(pipe)` everywhere) and, where
        the transformer has hooks, the named cache context with the step it serves (index and count within
        the current stage)."""
        _CURRENT_TIMESTEPS[self.pipe] = _CURRENT_TIMESTEPS[self.pipe.transformer] = timestep
        if self.tells_timestep:
            self.pipe._current_timestep = timestep
        if not self.hooked:
            return nullcontext()
        return cache_context(self.pipe.transformer, name, step, timestep)


def vae_device(vae: Any) -> torch.device:
    """Where the VAE computes: its execution device, as the pipelines read it. Under model CPU offload its weights
    wait on the CPU until its decode moves them, and the latents must already be on the execution device."""
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(vae)  # type: ignore[no-any-return]


class DiffusersImages:
    """Latents to the pipeline's own output: its VAE (``latent / scaling_factor + shift_factor``), its image
    processor, its model offloading and its output class, as its ``__call__`` ends."""

    def __init__(self, pipe: Any, output_type: str | None, return_dict: bool) -> None:
        self.pipe, self.output_type, self.return_dict = pipe, output_type, return_dict
        self.output_shift = True
        """Whether the output's decode adds the VAE's shift factor (SD3's inpaint pipeline leaves it out)."""

    def vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Model latent -> VAE latent (undo the pipeline's normalisation), on the VAE's device and dtype."""
        vae = self.pipe.vae
        latent = latent / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)  # SDXL's VAE has none
        return latent.to(device=vae_device(vae), dtype=vae.dtype)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latent -> (B, 3, H, W) RGB in [0, 1]."""
        image: torch.Tensor = self.pipe.vae.decode(self.vae_latent(latent), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def output(self, latent_image: torch.Tensor, latents: torch.Tensor, output_cls: Any) -> Any:
        """The pipeline's own output for the final latent image (``latents``: what output_type="latent" returns)."""
        if self.output_type == "latent":
            image: Any = latents
        else:
            vae = self.pipe.vae
            vae_latent = (
                self.vae_latent(latent_image)
                if self.output_shift
                else (latent_image / vae.config.scaling_factor).to(device=vae_device(vae), dtype=vae.dtype)
            )
            decoded = vae.decode(vae_latent, return_dict=False)[0]
            image = self.pipe.image_processor.postprocess(decoded, output_type=self.output_type)
        self.pipe.maybe_free_model_hooks()
        if not self.return_dict:
            return (image,)
        return output_cls(images=image)


_CURRENT_TIMESTEPS: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()


def current_timestep(pipeline_or_transformer: Any) -> torch.Tensor | None:
    """The timestep (0..1000 scale) of the transformer evaluation an accelerated call is running on this
    pipeline (or its transformer), None outside one. For diffusers' timestep callbacks on pipelines that
    lack ``current_timestep`` (StableDiffusion3Pipeline):
    ``PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: ralu_core.current_timestep(pipe))``."""
    return _CURRENT_TIMESTEPS.get(pipeline_or_transformer)


def stateful_hook_registry(module: Any) -> Any:
    """The diffusers hook registry of `module` itself, or None (we never create one up front: that would
    add an attribute to the user's model)."""
    return hook_registry(module)


def has_diffusers_hooks(module: Any) -> bool:
    """Whether any module under `module` carries diffusers hooks (a cache enabled or applied by the user)."""
    return any(hook_registry(m) is not None for m in module.modules())


NEEDS_TEXT_FROM_LAST_BLOCK = {"fbc_leader_block_hook": "diffusers' first-block cache (FirstBlockCacheConfig)"}
"""diffusers hooks (by registered name) that add a residual to both streams of the last block's output."""


def user_cache_problems(denoiser: Any, last_block_returns_text: bool) -> list[str]:
    """Caches the user put on the transformer that cannot run on it (found before any model runs)."""
    if last_block_returns_text or denoiser is None:
        return []
    found = set()
    for module in denoiser.modules():
        registry = hook_registry(module)
        if registry is not None:
            found |= {NEEDS_TEXT_FROM_LAST_BLOCK[n] for n in registry.hooks if n in NEEDS_TEXT_FROM_LAST_BLOCK}
    return [
        f"the transformer carries {name}, which cannot run on it: its last block returns no text stream and the "
        "cache adds its residual to both; remove that cache's hooks and use ralu's `first-block` in the recipe "
        "(`cache: [{name: first-block, threshold: 0.2}]`), which handles it"
        for name in sorted(found)
    ]


def refresh_hook_registries(module: Any) -> None:
    """diffusers caches the list of hooked submodules; hooks applied with ``apply_*`` after it was built
    would not get their cache context, so it is rebuilt once per call."""
    registry = stateful_hook_registry(module)
    if registry is not None:
        refresh_child_registries(registry)


def reset_stateful_hooks(module: Any) -> None:
    """Drop the state of every stateful diffusers hook under `module` (what the pipeline does after a call)."""
    for sub in module.modules():
        registry = stateful_hook_registry(sub)
        if registry is not None:
            registry.reset_stateful_hooks(recurse=False)


def cache_context(
    module: Any, name: str, step: StepInfo | None, timestep: torch.Tensor
) -> AbstractContextManager[None]:
    """diffusers' named cache context around one evaluation of `module` (which has hooks), with the step it
    serves. Models without diffusers' CacheMixin (SD3's transformer, whose
    hooks come from the ``apply_*`` functions) get the same context."""
    if step is None:
        return named_cache_context(module, name)
    fields = {"step_index": step.step, "num_inference_steps": step.steps, "sigma": step.sigma, "timestep": timestep}
    return named_cache_context(module, name, **fields)


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
