"""What adapters of diffusers DiT pipelines share, so that FLUX, SD3 and the next model differ only in
tokens, positions and their transformer call.

`DiTAdapter` binds a call's arguments like the pipeline, checks the image size against the recipe's
coarsest level (from a loaded pipeline or, before loading, from the stored component configs), runs
the pipeline's own input checks, exposes the transformer to block-level caches, builds embedded
random-weight pipelines, and registers itself as a plugin (`AdapterPlugin`). `DiTCall` is composed of
what every prepared call has: the pipeline's schedule (`PipelineSchedule`), its images
(`DiffusersImages`), its transformer's hooks (`DiffusersHooks`) and RAS's keys and values (`KeysValues`).
"""

from __future__ import annotations

import abc
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, cast

import attrs
import torch

from ralu_core.errors import CallError
from ralu_core.pipelines.adapter import ConfigReader, check_image_size, is_diffusers_pipeline
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.diffusers_private import execution_device
from ralu_core.pipelines.kv_store import KeysValues, KVStore
from ralu_core.pipelines.pipeline_call import DiffusersHooks, DiffusersImages, default_num_inference_steps
from ralu_core.plugins.hookspecs import RegisterAdapter, RegisterModel, RegisterRecipe, hookimpl
from ralu_core.plugins.models import NamedModel
from ralu_core.sampling.contract import BoundCall, ModelAdapter, ModelCall, ProgressBar
from ralu_core.sampling.randomness import GeneratorArg, per_image_generators
from ralu_core.sampling.tokens import TokenGrid
from ralu_core.strategies.base import StepInfo


class PipelineSchedule:
    """The pipeline's sigmas and resolution shift, read with its own module's helpers (``retrieve_timesteps``,
    ``calculate_shift``) on a fresh scheduler from its config, so the user's scheduler is not touched."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe, self.device = pipe, device

    def helper(self, name: str) -> Callable[..., Any]:
        """A helper function of the pipeline's own module (each diffusers pipeline module carries copies), or,
        for a subclass defined elsewhere, of the nearest base class's module that has it."""
        for cls in type(self.pipe).__mro__:
            helper = getattr(sys.modules.get(cls.__module__), name, None)
            if callable(helper):
                return helper  # type: ignore[no-any-return]
        raise AttributeError(f"no module of {type(self.pipe).__name__} or its bases defines {name}")

    def resolution_shift(self, image_tokens: int, max_shift: float) -> float | None:
        """The scheduler's mu for `image_tokens` if it shifts with resolution, else None."""
        if not self.pipe.scheduler.config.get("use_dynamic_shifting", False):
            return None
        return self.shift_mu(image_tokens, max_shift)

    def shift_mu(self, image_tokens: int, max_shift: float) -> float:
        """mu for `image_tokens`, by the pipeline's ``calculate_shift`` and its scheduler's config."""
        config = self.pipe.scheduler.config
        return float(
            self.helper("calculate_shift")(
                image_tokens,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", max_shift),
            )
        )

    def shift(self, mu: float | None) -> float:
        """The shift the pipeline's schedule uses: exp(mu) when it shifts with resolution, else its static shift."""
        config = self.pipe.scheduler.config
        if config.get("use_dynamic_shifting", False) and mu is not None:
            return math.exp(mu)
        return float(config.shift)

    def sigmas(self, steps: int, mu: float | None, custom: list[float] | None) -> torch.Tensor:
        """The pipeline's own sigmas for `steps` (`custom`: the sigmas its ``__call__`` passes, if any)."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        extra = {} if mu is None else {"mu": mu}
        self.helper("retrieve_timesteps")(scheduler, steps, self.device, sigmas=custom, **extra)
        return scheduler.sigmas.to(torch.float32)  # type: ignore[no-any-return]


class DiTCall(ModelCall):
    """A prepared call of a diffusers DiT pipeline, composed of the parts every model shares: the pipeline's
    schedule, its images (VAE and output), its transformer's hooks and, where the model keeps them, RAS's keys
    and values. A model's call adds its knowledge: prompt encoding, noise, tokens, the transformer call."""

    dtype: torch.dtype
    """The prompt embeddings' dtype (the model's call sets it): the latents are drawn in it."""

    def __init__(self, pipe: Any, args: Any, height: int, width: int) -> None:
        self.pipe = pipe
        self.args = args
        self.height, self.width = height, width
        self.device = execution_device(pipe)
        self.batch_size = args.image_batch_size()
        self.generator: GeneratorArg = args.generator
        self.requested_steps = args.num_inference_steps
        self.default_steps = default_num_inference_steps(pipe)
        self.joint_attention_kwargs = dict(args.joint_attention_kwargs or {})
        self.mu: float | None = None
        self.schedule = PipelineSchedule(pipe, self.device)
        terminal = pipe.scheduler.config.get("shift_terminal")
        self.terminal_sigma = None if terminal is None else float(terminal)
        self.images = DiffusersImages(pipe, args.output_type, args.return_dict)
        self.hooks = DiffusersHooks(pipe)
        self.keys_values: KeysValues | None = None
        self._rows_ok: bool | None = None
        self.parts = (self.hooks,)

    def stand_in_problems(self) -> list[str]:
        """Why the model's attention processors cannot be stood in for (empty: they can); a model whose stand-ins
        take a RoPE table per batch row says so here."""
        return ["this model's processors take no positions per batch row"]

    def positions_per_row(self) -> bool:
        """Whether this call can give each batch row its own positions (the attention processors are diffusers'
        defaults, which the stand-ins replace); if not, images at different positions are evaluated apart."""
        if self._rows_ok is None:
            self._rows_ok = not self.stand_in_problems()
        if self._rows_ok and self.keys_values is not None:
            self.keys_values.ensure_processors()
        return self._rows_ok

    def keep_keys_values(
        self, modules: Callable[[], Mapping[str, Any]], stand_in: Callable[[Any, str], Any], slots: int
    ) -> None:
        """RAS attention for this call: `stand_in(original, layer)` replaces each of `modules()`'s processors
        while a stage keeps keys and values (one store slot per row of the batches the call evaluates)."""
        self.keys_values = KeysValues(modules, stand_in, slots)
        self.parts = (self.hooks, self.keys_values)  # the processors come off first

    @property
    def kv_store(self) -> KVStore | None:
        """The current stage's keys and values, where it keeps them (a stage with ``inactive: kv-cache``)."""
        return None if self.keys_values is None else self.keys_values.store

    def kv_routing(self, slots: Sequence[int], active: torch.Tensor | None) -> AbstractContextManager[None]:
        """Around one transformer evaluation: which store slots its rows are and which tokens they carry."""
        return nullcontext() if self.keys_values is None else self.keys_values.routing(slots, active)

    def denoiser_context(
        self, name: str, step: StepInfo | None, timestep: torch.Tensor
    ) -> AbstractContextManager[None]:
        """Around one transformer evaluation: diffusers' named cache context and current timestep."""
        return self.hooks.context(name, step, timestep)

    def latent_image_noise(self) -> torch.Tensor:
        """(B, C, h, w) initial latents of a pipeline whose latents are images (SD3, Lumina): its own
        ``prepare_latents``, or the call's `latents` after checking their shape. Needs `grid` and `dtype`."""
        grid, dtype = self.grid, self.dtype
        if self.args.latents is None:
            return self.pipe.prepare_latents(  # type: ignore[no-any-return]
                self.batch_size, grid.channels, self.height, self.width, dtype, self.device, self.generator, None
            )
        latents: torch.Tensor = self.args.latents.to(device=self.device, dtype=dtype)
        expected = (self.batch_size, grid.channels, *grid.latent_size)
        if tuple(latents.shape) != expected:
            raise CallError(f"`latents` must have shape {expected}, got {tuple(latents.shape)}")
        return latents

    def encoded_image(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Image-to-image: (B, C, h, w) latents of the call's `image`, as the pipelines' ``prepare_latents`` make
        them: preprocessed to the call's size, encoded by the model's `encode` (its VAE, drawing from the call's
        generators) unless already latents, then repeated for every image of the batch."""
        pipe = self.pipe
        image = pipe.image_processor.preprocess(self.args.image, height=self.height, width=self.width)
        image = image.to(dtype=torch.float32).to(device=self.device, dtype=self.dtype)
        latents = image if image.shape[1] == pipe.vae.config.latent_channels else encode(image)
        given = latents.shape[0]
        if self.batch_size % given != 0:
            raise CallError(f"cannot repeat {given} input images for {self.batch_size} images; give 1 or one per image")
        return torch.cat([latents] * (self.batch_size // given), dim=0)

    def mask_latents(self, size: tuple[int, int]) -> torch.Tensor:
        """Inpainting: (B, 1, h, w) the call's `mask_image` as the inpaint pipelines make it: preprocessed (binarised)
        at the call's size, resized nearest to the latents' `size`, in the latents' dtype, repeated for every image
        of the batch."""
        mask = self.pipe.mask_processor.preprocess(self.args.mask_image, height=self.height, width=self.width)
        mask = torch.nn.functional.interpolate(mask, size=size).to(device=self.device, dtype=self.dtype)
        given = mask.shape[0]
        if self.batch_size % given != 0:
            raise CallError(f"cannot repeat {given} masks for {self.batch_size} images; give 1 or one per image")
        return mask.repeat(self.batch_size // given, 1, 1, 1)

    def custom_sigmas(self, steps: int) -> list[float] | None:
        """The sigmas the pipeline passes to its scheduler (None: the scheduler's own)."""
        return None

    def pipeline_sigmas(self, steps: int) -> torch.Tensor:
        return self.schedule.sigmas(steps, self.mu, self.custom_sigmas(steps))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.images.decode(latent)

    def progress_bar(self, total: int) -> AbstractContextManager[ProgressBar]:
        return self.pipe.progress_bar(total=total)  # type: ignore[no-any-return]


def packed_size_rule(vae_factor: int, patch: int, coarsest_level: int, packing: str) -> tuple[int, str]:
    """(multiple, why) for a model whose tokens pack `patch` x `patch` latent pixels: the VAE factor times the patch,
    times 2 for a recipe with a half-resolution stage."""
    why = f"for this recipe (VAE factor {vae_factor} x {packing}" + (
        " x 2 for its half-resolution stage)" if coarsest_level else ")"
    )
    return vae_factor * patch * 2**coarsest_level, why


@contextmanager
def swapped_submodule(module: Any, name: str, replacement: Any) -> Iterator[None]:
    """While inside, `module.name` is `replacement` (a token-strip embedding in place of a patch embedding);
    the original is put back on exit, even after an error."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


class DiTAdapter(ModelAdapter):
    """Base of the adapters for diffusers DiT pipelines: binds a call like the pipeline, checks its size
    against the recipe, runs the pipeline's own input checks; checks stored configs before loading and builds
    embedded random-weight pipelines (capabilities every DiT adapter has). Counting FLOPs
    (`ralu_core.measurement.profile.CountsFlops`) is each model's own."""

    Arguments: ClassVar[type[PipelineArguments]]
    architecture: ClassVar[str]
    """What the model is, for messages (``FLUX``, ``SD3``)."""
    architectures: ClassVar[tuple[str, ...]] = ()
    embedded_models: ClassVar[tuple[str, ...]] = ()
    size_rule_reads_transformer: ClassVar[bool] = True
    """Whether `size_rule` needs the transformer's config (SD3's patch size); if not, it is not fetched."""
    long_text_tokenizer: ClassVar[str | None] = None
    """The tokenizer of the text encoder that reads up to ``max_sequence_length`` tokens (T5)."""

    @abc.abstractmethod
    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        """(multiple, why): what each image side must be a multiple of for a recipe with this coarsest level."""

    @abc.abstractmethod
    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        """The full-resolution token grid the pipeline uses for an image size."""

    @abc.abstractmethod
    def check_call(self, pipeline: Any, bound: Any, height: int, width: int) -> None:
        """The pipeline's own input checks (``check_inputs``) and any the model adds."""

    @abc.abstractmethod
    def make_call(self, pipeline: Any, bound: Any, height: int, width: int) -> ModelCall:
        """Encode the prompts and return the prepared call."""

    def supports(self, pipeline: Any) -> bool:
        return is_diffusers_pipeline(pipeline, self.pipeline_classes)

    def arguments_for(self, pipeline: Any) -> Any:
        """The arguments class of `pipeline`'s ``__call__`` (a variant, e.g. image-to-image, may add some)."""
        return self.Arguments

    def size(self, pipeline: Any, coarsest_level: int, bound: Any) -> tuple[int, int]:
        """The call's image size (the pipeline's default where not given), checked against the recipe."""
        default = pipeline.default_sample_size * pipeline.vae_scale_factor
        height, width = bound.height or default, bound.width or default
        rule = self.size_rule(int(pipeline.vae_scale_factor), pipeline.transformer.config, coarsest_level)
        return check_image_size(height, width, *rule)

    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        bound: Any = self.arguments_for(pipeline).bind(args, kwargs)
        height, width = self.size(pipeline, coarsest_level, bound)
        if bound.num_inference_steps is not None and bound.num_inference_steps < 1:
            raise CallError(f"num_inference_steps must be at least 1, got {bound.num_inference_steps}")
        strength = getattr(bound, "strength", None)  # image-to-image
        if strength is not None and not bound.starts_from_latents():
            if getattr(bound, "image", None) is None:
                raise CallError(f"{type(pipeline).__name__} needs an `image` to start from")
            if not 0.0 < strength <= 1.0:
                raise CallError(f"strength must lie in (0, 1] (the share of the schedule run), got {strength}")
            if bound.latents is not None:
                raise CallError("`latents` with an input image: give the image only (ralu noises it as the pipeline)")
            if getattr(bound, "needs_mask", False) and bound.mask_image is None:
                raise CallError(f"{type(pipeline).__name__} needs a `mask_image` (white: repaint, black: keep)")
        self.check_call(pipeline, bound, height, width)
        per_image_generators(bound.generator, bound.image_batch_size())
        return BoundCall(
            denoiser=pipeline.transformer,
            grid=self.grid(pipeline, height, width),
            requested_steps=bound.num_inference_steps,
            default_steps=default_num_inference_steps(pipeline),
            strength=strength,
            prepare=partial(self.make_call, pipeline, bound, height, width),
        )

    # --- checks before loading ------------------------------------------------------------------------

    def prompt_token_limit(self, call_kwargs: Mapping[str, Any]) -> tuple[str, int] | None:
        if self.long_text_tokenizer is None:
            return None
        default = attrs.fields(cast(Any, self.Arguments)).max_sequence_length.default
        return self.long_text_tokenizer, int(call_kwargs.get("max_sequence_length", default))

    def size_rule_from_configs(self, read_config: ConfigReader, coarsest_level: int) -> tuple[int, str] | None:
        vae = read_config("vae")
        transformer = read_config("transformer") if self.size_rule_reads_transformer else {}
        if vae is None or transformer is None or not vae.get("block_out_channels"):
            return None
        return self.size_rule(2 ** (len(vae["block_out_channels"]) - 1), transformer, coarsest_level)

    # --- embedded random-weight pipelines ---------------------------------------------------------

    def build_embedded(self, name: str) -> Any:
        """Build the embedded pipeline `name` (one of `embedded_models`)."""
        raise KeyError(name)

    def embedded_component_config(self, name: str, component: str) -> Mapping[str, Any] | None:
        """The size-deciding config of an embedded pipeline's component, without building it."""
        return None

    def embedded_pipeline(self, name: str) -> Any:
        if name not in self.embedded_models:
            raise KeyError(f"the {self.name!r} adapter has no embedded model {name!r}")
        return self.build_embedded(name)

    def embedded_config(self, name: str, component: str) -> Mapping[str, Any] | None:
        return self.embedded_component_config(name, component) if name in self.embedded_models else None

    def embedded_note(self, name: str) -> str:
        return (
            f"{name} is an embedded {self.architecture}-architecture pipeline with RANDOM weights (seed 0): its images "
            "are noise-like and NOT meaningful. Pass --model PATH|HUB-ID for real weights."
        )


class AdapterPlugin:
    """The plugin of an adapter package: the adapter and the package's recipes (``recipes/NAME.yaml``).
    Its entry point names an instance: ``flux = "ralu_flux.plugin:plugin"``."""

    def __init__(
        self,
        adapter: ModelAdapter,
        package: str,
        recipes: tuple[str, ...],
        models: Callable[[], Sequence[NamedModel]] = tuple,
    ) -> None:
        self.adapter = adapter
        self.package = package
        self.recipes = recipes
        self.models = models

    @hookimpl
    def ralu_register_models(self, register: RegisterModel) -> None:
        for model in self.models():
            register(model)

    @hookimpl
    def ralu_register_model_adapters(self, register: RegisterAdapter) -> None:
        register(self.adapter)

    @hookimpl
    def ralu_register_recipes(self, register: RegisterRecipe) -> None:
        folder = files(self.package) / "recipes"
        for name in self.recipes:
            register(name, Path(str(folder / f"{name}.yaml")))

    @hookimpl
    def ralu_resolve_model_adapter(self, pipeline: Any) -> ModelAdapter | None:
        return self.adapter if self.adapter.supports(pipeline) else None
