"""Named models: pipelines a plugin can load offline by name (``ralu generate --model NAME``).

Why: a trained model that ships inside a package (ralu-bench's reference models) is neither an
adapter's random-weight demo pipeline nor a hub id. A plugin registers it with the calling
conventions it was trained for (size, sequence length, guidance), so that the CLI produces
meaningful images from it with no flags, and a user's own flags still win.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["NamedModel"]


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@attrs.frozen(kw_only=True)
class NamedModel:
    """A pipeline a plugin can build by name, offline."""

    name: str
    """What ``--model`` takes (unique across plugins)."""
    adapter: str
    """Name of the model adapter that drives the pipeline (the recipes' ``model`` field)."""
    load: Callable[..., Any]
    """Builds the pipeline, called only when the model is used: ``load()`` in float32 on the CPU (the CLI
    then moves it), or ``load(device, dtype)`` where `loads_on_device` is set."""
    loads_on_device: bool = False
    """Whether `load` builds the pipeline straight on the device in the dtype of the call (a full-size model
    that would take minutes and twice the memory as float32 on the CPU first)."""
    note: str = ""
    """What a user should know about its images, printed when it is loaded."""
    prompt_note: Callable[[Sequence[str]], str] | None = None
    """What a user should know about these prompts with this model (words it never saw), printed with the
    note; "" where there is nothing to say."""
    call_defaults: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    """Pipeline arguments the model was trained for (``height``, ``max_sequence_length``, guidance ...);
    arguments the user passes override them."""
    folder: Path | None = None
    """Where the pipeline is stored, if it is a diffusers folder: the CLI reads its component configs
    (not its weights) to check a call's arguments before loading it."""
    default: bool = False
    """The model ``ralu generate`` and ``ralu bench`` use for its adapter's recipes when no ``--model``
    is given (preferred over the adapter's own random-weight embedded models)."""
    architecture: str | None = None
    """The adapter architecture it instantiates (``flux-dev``), where it has no `folder`: what ``ralu flops``
    counts for it."""

    def flops_source(self) -> str | None:
        """What an adapter's FLOPs profile is built from for this model: its folder's configs, or its
        architecture; None where it has neither."""
        return str(self.folder) if self.folder is not None else self.architecture
