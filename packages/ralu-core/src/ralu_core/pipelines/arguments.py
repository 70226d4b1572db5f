"""Binding a pipeline call's arguments the way the pipeline itself would.

Adapters declare their pipeline's ``__call__`` parameters as a frozen attrs class deriving from
`PipelineArguments`; `bind` maps positional and keyword arguments onto it with the same errors
Python gives for a mistyped name, and features ralu cannot honour yet are refused by name, before
any work, instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import attrs

from ralu_core.errors import CallArgumentError, CallError, UnsupportedArgumentError

_A = TypeVar("_A", bound="PipelineArguments")


class PipelineArguments:
    """Base for an attrs class mirroring a pipeline's call signature (fields in signature order)."""

    pipeline_name: ClassVar[str] = "pipeline"
    unsupported_features: ClassVar[dict[str, str]] = {}
    """Argument name -> feature label, for arguments that must stay None (e.g. callbacks)."""
    positional_order: ClassVar[tuple[str, ...] | None] = None
    """The pipeline's parameter order, where it differs from the fields' (a variant's class that adds fields)."""

    prompt: Any
    prompt_embeds: Any
    num_images_per_prompt: int

    @classmethod
    def bind(cls: type[_A], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _A:
        names = list(cls.positional_order or [f.name for f in attrs.fields(cls)])  # type: ignore[arg-type]
        if len(args) > len(names):
            raise CallArgumentError(
                f"{cls.pipeline_name} takes at most {len(names)} positional arguments, got {len(args)}"
            )
        merged = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key in merged:
                raise CallArgumentError(f"got multiple values for argument {key!r}")
            if key not in names:
                raise CallArgumentError(f"{cls.pipeline_name}.__call__() got an unexpected keyword argument {key!r}")
            merged[key] = value
        bound = cls(**merged)
        bound.check_supported()
        return bound

    def check_supported(self) -> None:
        used = sorted({label for key, label in self.unsupported_features.items() if getattr(self, key) is not None})
        if used:
            raise UnsupportedArgumentError(f"ralu does not support {', '.join(used)} with {self.pipeline_name} yet")

    def starts_from_latents(self) -> bool:
        """Image-to-image variants: whether this call starts from its `latents` with no input image (FLUX Fill given
        its conditioning packed), so that neither an image nor its absence beside `latents` is refused."""
        return False

    def prompt_batch_size(self) -> int:
        """Prompts in the call (before num_images_per_prompt), as the pipelines count them."""
        if isinstance(self.prompt, str):
            return 1
        if isinstance(self.prompt, list):
            return len(self.prompt)
        if self.prompt_embeds is not None:
            return int(self.prompt_embeds.shape[0])
        raise CallError("provide either `prompt` or `prompt_embeds`")

    def image_batch_size(self) -> int:
        if self.num_images_per_prompt is None or self.num_images_per_prompt < 1:
            raise CallError(f"num_images_per_prompt must be at least 1, got {self.num_images_per_prompt}")
        return self.prompt_batch_size() * self.num_images_per_prompt
