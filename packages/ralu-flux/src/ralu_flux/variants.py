"""FLUX's variant pipelines, each the text-to-image call plus what the variant feeds the transformer: an input
image to start from (img2img), a region kept at every step (inpaint), extra channels per token (Fill, Canny/Depth),
a reference image's tokens riding along (Kontext), a ControlNet's residuals (ControlNet). Each is model knowledge
on the shared pieces of the core: the engine's image start and kept region, `TokenField`, and the ControlNet
conventions of `ralu_core.pipelines.controlnet`."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from ralu_core.errors import CallError, UnsupportedPipelineError
from ralu_core.pipelines.controlnet import check_control_images, check_control_size, controlnet_scales, controlnets
from ralu_core.sampling.known_region import TokenField
from ralu_core.sampling.tokens import FULL, HALF, TokenState, gather_tokens
from ralu_core.strategies.base import StepInfo
from ralu_flux.attention import attention_modules
from ralu_flux.call import FluxArguments, FluxCall, Riders, rows_index


@attrs.frozen(kw_only=True)
class FluxImg2ImgArguments(FluxArguments):
    """FluxImg2ImgPipeline.__call__'s arguments: FluxPipeline's, an input `image` and its `strength`."""

    pipeline_name: ClassVar[str] = "FluxImg2ImgPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "image", "height"),
        *("width", "strength", "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt"),
        *("generator", "latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image"),
        *("ip_adapter_image_embeds", "negative_ip_adapter_image", "negative_ip_adapter_image_embeds"),
        *("negative_prompt_embeds", "negative_pooled_prompt_embeds", "output_type", "return_dict"),
        *("joint_attention_kwargs", "callback_on_step_end", "callback_on_step_end_tensor_inputs"),
        "max_sequence_length",
    )

    image: Any = None
    strength: float = 0.6
    guidance_scale: float = 7.0

    def checked_before_size(self) -> tuple[Any, ...]:
        return (self.strength,)

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxImg2ImgCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxInpaintArguments(FluxImg2ImgArguments):
    """FluxInpaintPipeline.__call__'s arguments: image-to-image's and a `mask_image` (white: repaint, black: keep).
    `masked_image_latents` is accepted and, as in the pipeline with FLUX.1's 64-channel transformer, unused."""

    pipeline_name: ClassVar[str] = "FluxInpaintPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        **FluxArguments.unsupported_features,
        "padding_mask_crop": "padding_mask_crop (inpainting a crop around the mask)",
    }
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "image", "mask_image"),
        *("masked_image_latents", "height", "width", "padding_mask_crop", "strength", "num_inference_steps"),
        *("sigmas", "guidance_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds"),
        *("pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image"),
        *("negative_ip_adapter_image_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"),
        *("output_type", "return_dict", "joint_attention_kwargs", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    needs_mask: ClassVar[bool] = True
    mask_image: Any = None
    masked_image_latents: Any = None
    padding_mask_crop: int | None = None

    def checked_before_size(self) -> tuple[Any, ...]:
        return (self.image, self.mask_image, self.strength)

    def checked_after_size(self) -> tuple[Any, ...]:
        return (self.output_type,)

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxInpaintCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxFillArguments(FluxImg2ImgArguments):
    """FluxFillPipeline.__call__'s arguments: an input `image`, a `mask_image` (white: repaint) or the conditioning
    itself as `masked_image_latents`, and `strength` (1.0: from noise). It has no negative prompts."""

    pipeline_name: ClassVar[str] = "FluxFillPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "image", "mask_image", "masked_image_latents", "height", "width", "strength"),
        *("num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt", "generator", "latents"),
        *("prompt_embeds", "pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    mask_image: Any = None
    masked_image_latents: Any = None
    strength: float = 1.0
    guidance_scale: float = 30.0

    def starts_from_latents(self) -> bool:
        return self.masked_image_latents is not None

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        if self.mask_image is None and self.masked_image_latents is None:
            raise CallError("FluxFillPipeline needs a `mask_image` (white: repaint) or `masked_image_latents`")
        if self.masked_image_latents is not None and self.latents is None:
            raise CallError(
                "FluxFillPipeline given `masked_image_latents` (and no image) starts from `latents`: give them too"
            )
        pipeline.check_inputs(
            self.prompt,
            self.prompt_2,
            self.strength,
            height,
            width,
            prompt_embeds=self.prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            max_sequence_length=self.max_sequence_length,
            image=self.image,
            mask_image=self.mask_image,
            masked_image_latents=self.masked_image_latents,
        )

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxFillCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxControlNetArguments(FluxArguments):
    """FluxControlNetPipeline.__call__'s arguments: FluxPipeline's and the ControlNet's (its image, mode, scale, and
    the share of the steps it acts in)."""

    pipeline_name: ClassVar[str] = "FluxControlNetPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "height", "width"),
        *("num_inference_steps", "sigmas", "guidance_scale", "control_guidance_start", "control_guidance_end"),
        *("control_image", "control_mode", "controlnet_conditioning_scale", "num_images_per_prompt", "generator"),
        *("latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds"),
        *("negative_ip_adapter_image", "negative_ip_adapter_image_embeds", "negative_prompt_embeds"),
        *("negative_pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    guidance_scale: float = 7.0
    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    control_image: Any = None
    control_mode: int | list[int] | None = None
    controlnet_conditioning_scale: float | list[float] = 1.0

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        check_controlnet(pipeline, self, height, width)
        super().check_inputs(pipeline, height, width)

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxControlNetCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxControlArguments(FluxArguments):
    """FluxControlPipeline.__call__'s arguments (FLUX.1 Canny and Depth): FluxPipeline's less the negative prompts,
    and a `control_image`."""

    pipeline_name: ClassVar[str] = "FluxControlPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "control_image", "height", "width", "num_inference_steps", "sigmas"),
        *("guidance_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds", "pooled_prompt_embeds"),
        *("output_type", "return_dict", "joint_attention_kwargs", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    control_image: Any = None

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        if self.control_image is None:
            raise CallError("FluxControlPipeline needs a `control_image` (a Canny edge map or a depth map)")
        check_control_size(self.control_image, height, width)
        pipeline.check_inputs(  # it has no negative prompts
            self.prompt,
            self.prompt_2,
            height,
            width,
            prompt_embeds=self.prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            max_sequence_length=self.max_sequence_length,
        )

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxControlCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxControlNetImg2ImgArguments(FluxImg2ImgArguments):
    """FluxControlNetImg2ImgPipeline.__call__'s arguments: image-to-image's and the ControlNet's (as
    `FluxControlNetArguments`'), no negative prompts."""

    pipeline_name: ClassVar[str] = "FluxControlNetImg2ImgPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "image", "control_image", "height", "width", "strength", "num_inference_steps"),
        *("sigmas", "guidance_scale", "control_guidance_start", "control_guidance_end", "control_mode"),
        *("controlnet_conditioning_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds"),
        *("pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    guidance_scale: float = 7.0
    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    control_image: Any = None
    control_mode: int | list[int] | None = None
    controlnet_conditioning_scale: float | list[float] = 1.0

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        check_controlnet(pipeline, self, height, width)
        pipeline.check_inputs(
            self.prompt,
            self.prompt_2,
            self.strength,
            height,
            width,
            None,  # callback_on_step_end_tensor_inputs
            prompt_embeds=self.prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            max_sequence_length=self.max_sequence_length,
        )

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxControlNetImg2ImgCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxControlNetInpaintArguments(FluxInpaintArguments):
    """FluxControlNetInpaintPipeline.__call__'s arguments: inpainting's and the ControlNet's (as
    `FluxControlNetArguments`'), no negative prompts."""

    pipeline_name: ClassVar[str] = "FluxControlNetInpaintPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "image", "mask_image", "masked_image_latents", "control_image", "height", "width"),
        *("strength", "padding_mask_crop", "sigmas", "num_inference_steps", "guidance_scale"),
        *("control_guidance_start", "control_guidance_end", "control_mode", "controlnet_conditioning_scale"),
        *("num_images_per_prompt", "generator", "latents", "prompt_embeds", "pooled_prompt_embeds", "output_type"),
        *("return_dict", "joint_attention_kwargs", "callback_on_step_end", "callback_on_step_end_tensor_inputs"),
        "max_sequence_length",
    )

    guidance_scale: float = 7.0
    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    control_image: Any = None
    control_mode: int | list[int] | None = None
    controlnet_conditioning_scale: float | list[float] = 1.0

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        check_controlnet(pipeline, self, height, width)
        pipeline.check_inputs(
            self.prompt,
            self.prompt_2,
            self.image,
            self.mask_image,
            self.strength,
            height,
            width,
            self.output_type,
            prompt_embeds=self.prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            padding_mask_crop=self.padding_mask_crop,
            max_sequence_length=self.max_sequence_length,
        )

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxControlNetInpaintCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class FluxKontextArguments(FluxArguments):
    """FluxKontextPipeline.__call__'s arguments: FluxPipeline's, the reference `image` first, and the area the size
    is fitted to (`max_area`) and the reference image's resizing (`_auto_resize`)."""

    pipeline_name: ClassVar[str] = "FluxKontextPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("image", "prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "height"),
        *("width", "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt", "generator"),
        *("latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds"),
        *("negative_ip_adapter_image", "negative_ip_adapter_image_embeds", "negative_prompt_embeds"),
        *("negative_pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length", "max_area"),
        "_auto_resize",
    )

    image: Any = None
    max_area: int = 1024**2
    auto_resize: bool = attrs.field(default=True, alias="_auto_resize")

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxKontextCall(pipe, self, height, width)


class FluxImg2ImgCall(FluxCall):
    """One prepared FluxImg2ImgPipeline call: FluxPipeline's, starting from the input image's latents."""

    def __init__(self, pipe: Any, args: FluxImg2ImgArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.strength = args.strength

    def start_image(self) -> torch.Tensor | None:
        latents = self.encoded_image(lambda image: self.pipe._encode_vae_image(image=image, generator=self.generator))
        return self.pipe._pack_latents(latents, *latents.shape)  # type: ignore[no-any-return]

    def initial_noise(self) -> torch.Tensor:
        return self.packed_noise()


class FluxInpaintCall(FluxImg2ImgCall):
    """One prepared FluxInpaintPipeline call: image-to-image's, keeping the unmasked region at every step."""

    def inpaint_mask(self) -> torch.Tensor:
        batch, channels, height, width = self.latent_shape()
        mask = self.mask_latents((height, width)).repeat(1, channels, 1, 1)
        return self.pipe._pack_latents(mask, batch, channels, height, width)  # type: ignore[no-any-return]


class FluxFillCall(FluxImg2ImgCall):
    """One prepared FluxFillPipeline call: image-to-image's, every generated token reading the masked image's
    latents and the mask as extra channels. At half resolution (RALU's first stages) they are what the pipeline
    would make of the image at half size: the masked image's latents averaged over 2 x 2 latent pixels, the mask
    averaged over 2 x 2 pixels before its 8 x 8-pixel packing (given packed as `masked_image_latents`, the mask is
    unpacked to pixels first)."""

    def __init__(self, pipe: Any, args: FluxFillArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.fill_args = args
        self._conditioning: TokenField | None = None

    def start_image(self) -> torch.Tensor | None:
        return None if self.args.image is None else super().start_image()

    def initial_noise(self) -> torch.Tensor:
        # Given `latents` (with its conditioning packed), the pipeline starts from them as they are.
        return FluxCall.initial_noise(self) if self.args.latents is not None else self.packed_noise()

    def token_channels(self, state: TokenState) -> torch.Tensor:
        if self._conditioning is None:  # made after the noise, in the pipeline's order of random draws
            self._conditioning = self._fill_conditioning()
        return self._conditioning.at(state)

    def _fill_conditioning(self) -> TokenField:
        pipe, args = self.pipe, self.fill_args
        batch, channels, _, _ = self.latent_shape()
        if args.masked_image_latents is not None:  # given packed, as the pipeline takes them
            given = args.masked_image_latents.to(device=self.device, dtype=self.dtype)
            masked_latents, packed_mask = given[..., : self.grid.token_dim], given[..., self.grid.token_dim :]
            mask = self._unpack_mask(packed_mask)
        else:
            image = pipe.image_processor.preprocess(args.image, height=self.height, width=self.width)
            mask = pipe.mask_processor.preprocess(args.mask_image, height=self.height, width=self.width)
            masked = (image.to(torch.float32) * (1 - mask)).to(device=self.device, dtype=self.dtype)
            packed_mask, masked_latents = pipe.prepare_mask_latents(
                mask, masked, batch, channels, 1, *image.shape[-2:], self.dtype, self.device, self.generator
            )
            mask = mask.repeat(batch // mask.shape[0], 1, 1, 1)
        full = torch.cat((masked_latents, packed_mask), dim=-1)
        if not self.grid.supports_half_resolution():
            return TokenField(full=full, half=None)
        half_latents = TokenField.of(masked_latents, self.grid).half
        assert half_latents is not None
        half_mask = self._pack_mask(torch.nn.functional.avg_pool2d(mask.to(torch.float32), 2))
        half = torch.cat((half_latents, half_mask.to(device=self.device, dtype=self.dtype)), dim=-1)
        return TokenField(full=full, half=half)

    def _unpack_mask(self, packed: torch.Tensor) -> torch.Tensor:
        """`_pack_mask` undone: FLUX Fill's packed mask channels -> (B, 1, H, W) pixels."""
        factor = self.pipe.vae_scale_factor
        grouped = self.pipe._unpack_latents(packed, self.height, self.width, factor)  # (B, 8 x 8, h, w)
        batch, _, rows, cols = grouped.shape
        pixels = grouped.reshape(batch, factor, factor, rows, cols).permute(0, 3, 1, 4, 2)
        return pixels.reshape(batch, 1, rows * factor, cols * factor)  # type: ignore[no-any-return]

    def _pack_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixel mask -> FLUX Fill's packing: each latent pixel's 8 x 8 pixels as channels, 2 x 2 latent
        pixels per token (FluxFillPipeline.prepare_mask_latents)."""
        factor = self.pipe.vae_scale_factor
        batch, _, height, width = mask.shape
        rows, cols = height // factor, width // factor
        grouped = mask[:, 0].reshape(batch, rows, factor, cols, factor).permute(0, 2, 4, 1, 3)
        return self.pipe._pack_latents(
            grouped.reshape(batch, factor * factor, rows, cols), batch, factor**2, rows, cols
        )  # type: ignore[no-any-return]


class FluxControlNetCall(FluxCall):
    """One prepared FluxControlNetPipeline call (one ControlNet or several): before each conditional evaluation the
    ControlNet runs on the same tokens, each reading its control image's latents at the token's level (averaged
    over 2 x 2 latent pixels at half resolution), and its residuals go to the transformer's blocks. Under RAS the
    ControlNet's attention keeps the skipped tokens' keys and values as the transformer's does."""

    def __init__(self, pipe: Any, args: Any, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.control_args = args  # FluxControlNetArguments, or a combination's with the same ControlNet fields
        self.multi = hasattr(pipe.controlnet, "nets")
        self.nets = controlnets(pipe)
        self.controls: list[TokenField] = []
        self.modes: Any = None
        self._at: tuple[list[torch.Tensor], torch.Tensor | None] | None = None

    def attention_modules(self) -> dict[str, Any]:
        nets = {f"controlnet.{name}": module for name, module in attention_modules(self.pipe.controlnet).items()}
        return {**attention_modules(self.pipe.transformer), **nets}

    def positions_per_row(self) -> bool:
        # A Union ControlNet puts a mode token before the text, so the rotary embedding per row (made for the
        # transformer's sequence) does not fit its sequence: images at different positions are evaluated apart.
        return not any(net.union for net in self.nets) and super().positions_per_row()

    def encode_controls(self) -> None:
        """Prepare and encode the control images (drawing from the generators), once."""
        if self.controls:
            return
        images = self.control_args.control_image
        images = list(images) if self.multi else [images]
        self.controls = [TokenField.of(control_latents(self, image), self.grid) for image in images]
        self.modes = self._modes(self.control_args.control_mode)

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the control images before it draws the noise.
        self.encode_controls()
        return super().initial_noise()

    def _modes(self, mode: Any) -> Any:
        """ControlNet-Union's mode per image, as the pipeline makes them: one tensor for one ControlNet (None where
        no mode is given); one per ControlNet where several, -1 for a ControlNet given none."""
        if not self.multi:
            if mode is None:
                return None
            return torch.tensor(mode).to(self.device, dtype=torch.long).view(-1, 1).expand(self.batch_size, 1)
        modes = mode if isinstance(mode, list) else [mode] * len(self.nets)
        return [
            torch.tensor(-1 if m is None else m).expand(self.batch_size).to(self.device, dtype=torch.long)
            for m in modes
        ]

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        controls = [field.at(state) for field in self.controls]
        self._at = ([c if active is None else gather_tokens(c, active) for c in controls], active)
        try:
            return super().predict(state, sigma, active, step=step)
        finally:
            self._at = None

    def block_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, rows: list[int], ids: torch.Tensor, step: StepInfo | None
    ) -> dict[str, Any]:
        assert self._at is not None, "block residuals are computed inside predict"
        index = rows_index(rows, x.device)
        controls = [c[index] for c in self._at[0]]
        args = self.control_args
        scales = controlnet_scales(
            args.controlnet_conditioning_scale,
            args.control_guidance_start,
            args.control_guidance_end,
            len(self.nets),
            step,
        )
        guided = self.nets[0].config.guidance_embeds
        guidance = torch.tensor([self.args.guidance_scale], device=self.device).expand(x.shape[0]) if guided else None
        cond: Any
        mode: Any
        scale: Any
        if self.multi:
            modes = [None if m is None else m[index] for m in self.modes]
            cond, mode, scale = controls, modes, scales
        else:
            cond, mode, scale = controls[0], None if self.modes is None else self.modes[index], scales[0]
        blocks, singles = self.pipe.controlnet(
            hidden_states=x,
            controlnet_cond=cond,
            controlnet_mode=mode,
            conditioning_scale=scale,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=self.pooled[index],
            encoder_hidden_states=self.prompt_embeds[index],
            txt_ids=self.text_ids,
            img_ids=ids,
            joint_attention_kwargs=self.joint_attention_kwargs,
            return_dict=False,
        )
        return {
            "controlnet_block_samples": blocks,
            "controlnet_single_block_samples": singles,
            "controlnet_blocks_repeat": False,
        }


class FluxControlCall(FluxCall):
    """One prepared FluxControlPipeline call (FLUX.1 Canny and Depth): every generated token reads the control
    image's latents as extra channels, at the token's level (averaged over 2 x 2 latent pixels at half resolution)."""

    def __init__(self, pipe: Any, args: FluxControlArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.control: TokenField | None = None

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the control image (drawing from the generators) before it draws the noise.
        self.control = TokenField.of(control_latents(self, self.args.control_image), self.grid)
        return super().initial_noise()

    def token_channels(self, state: TokenState) -> torch.Tensor:
        assert self.control is not None, "the control image is encoded with the initial noise"
        return self.control.at(state)


class FluxControlNetImg2ImgCall(FluxControlNetCall, FluxImg2ImgCall):
    """One prepared FluxControlNetImg2ImgPipeline call: the ControlNet's residuals, starting from the input image."""

    def start_image(self) -> torch.Tensor | None:
        self.encode_controls()  # the pipeline encodes the control images before the input image
        return super().start_image()


class FluxControlNetInpaintCall(FluxControlNetCall, FluxInpaintCall):
    """One prepared FluxControlNetInpaintPipeline call: the ControlNet's residuals, the unmasked region kept."""

    def start_image(self) -> torch.Tensor | None:
        self.encode_controls()  # the pipeline encodes the control images before the input image
        return super().start_image()


def control_latents(call: FluxCall, image: Any) -> torch.Tensor:
    """A control image prepared, encoded and packed as FLUX's control pipelines do (packed latents pass as given)."""
    pipe, vae = call.pipe, call.pipe.vae
    prepared = pipe.prepare_image(
        image=image,
        width=call.width,
        height=call.height,
        batch_size=call.batch_size,
        num_images_per_prompt=call.args.num_images_per_prompt,
        device=call.device,
        dtype=vae.dtype,
    )
    if prepared.ndim != 4:
        return prepared  # type: ignore[no-any-return]
    latents = vae.encode(prepared).latent_dist.sample(generator=call.generator)
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    rows, cols = latents.shape[2:]
    return pipe._pack_latents(latents, call.batch_size, latents.shape[1], rows, cols)  # type: ignore[no-any-return]


def check_controlnet(pipe: Any, bound: Any, height: int, width: int) -> None:
    """What FluxControlNetPipeline would fail on, and the ControlNets ralu cannot make follow its tokens."""
    nets = check_control_images(pipe, bound.control_image, height, width)
    mode, multi = bound.control_mode, hasattr(pipe.controlnet, "nets")
    if not multi and mode is not None and not isinstance(mode, int):
        raise CallError("for one ControlNet, `control_mode` must be an int or None")
    if multi and isinstance(mode, list) and len(mode) != len(nets):
        raise CallError(f"give one `control_mode` per ControlNet: a list of {len(nets)} (None for a plain one)")
    if len({id(net) for net in nets}) < len(nets):
        raise UnsupportedPipelineError(
            "one ControlNet serves several control images here (a Union ControlNet with several conditions): its "
            "conditions would share one key/value store under RAS, which ralu does not keep apart yet; give each "
            "condition its own ControlNet, or use one condition"
        )
    if any(net.input_hint_block is not None for net in nets):
        raise UnsupportedPipelineError(
            "this ControlNet reads its control image in pixels through an input hint block (XLabs' FLUX ControlNets), "
            "which cannot follow ralu's token sets yet; ralu drives ControlNets that read VAE latents (InstantX, "
            "Union, Shakker-Labs)"
        )


class FluxKontextCall(FluxCall):
    """One prepared FluxKontextPipeline call: FluxPipeline's, with the reference image's tokens riding along at every
    evaluation (RoPE ids (1, row, col)). Where the generated tokens' coarsest level is half resolution (RALU's first
    stages), the reference rides at half resolution too, averaged over 2 x 2 latent pixels, so that both images
    share one position grid."""

    def __init__(self, pipe: Any, args: FluxKontextArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.kontext_args = args
        self._riders: dict[int, Riders] = {}

    def riders(self, level: int) -> Riders | None:
        return self._riders.get(level)

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the reference image (drawing from the generators) before it draws the noise.
        reference = self._reference_latents()
        if reference is not None:
            self._riders = {FULL: self._pack_reference(reference), HALF: self._pack_reference(_halved(reference))}
        return super().initial_noise() if self.args.latents is not None else self.packed_noise()

    def _reference_latents(self) -> torch.Tensor | None:
        """(B, C, h, w) the reference image's latents, resized, encoded and repeated as FluxKontextPipeline does."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe, image = self.pipe, self.kontext_args.image
        if image is None:
            return None
        if not (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            first = image[0] if isinstance(image, list) else image
            image_height, image_width = pipe.image_processor.get_default_height_width(first)
            if self.kontext_args.auto_resize:
                aspect = image_width / image_height
                _, image_width, image_height = min(
                    (abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS
                )
            multiple = pipe.vae_scale_factor * 2
            image_width, image_height = image_width // multiple * multiple, image_height // multiple * multiple
            image = pipe.image_processor.resize(image, image_height, image_width)
            image = pipe.image_processor.preprocess(image, image_height, image_width)
        image = image.to(device=self.device, dtype=self.dtype)
        latents = image if image.shape[1] == pipe.latent_channels else pipe._encode_vae_image(image, self.generator)
        if self.batch_size % latents.shape[0] != 0:
            raise CallError(
                f"cannot repeat {latents.shape[0]} reference images for {self.batch_size} images; "
                "give 1 or one per image"
            )
        return torch.cat([latents] * (self.batch_size // latents.shape[0]), dim=0)  # type: ignore[no-any-return]

    def _pack_reference(self, latents: torch.Tensor) -> Riders:
        batch, channels, height, width = latents.shape
        ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, torch.float32)
        ids[..., 0] = 1
        return Riders(values=self.pipe._pack_latents(latents, batch, channels, height, width), ids=ids)


def _halved(latents: torch.Tensor) -> torch.Tensor:
    """Latents at half resolution, averaged over 2 x 2 pixels (area-resized where a side's tokens are odd), with an
    even side so that they pack into 2 x 2 tokens."""
    height, width = latents.shape[-2:]
    size = (2 * -(-height // 4), 2 * -(-width // 4))
    return torch.nn.functional.interpolate(latents.float(), size=size, mode="area").to(latents.dtype)
