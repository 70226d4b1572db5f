"""A diffusers hook that makes a transformer block return its input streams unchanged: what a block-level cache's
reusing step runs in place of the blocks it skips (imports diffusers; used by the caches' hook modules)."""

from __future__ import annotations

from typing import Any

import torch

from ralu_caching.blocks import BlockIO
from ralu_core.pipelines.diffusers_private import ModelHook


class PassThrough(ModelHook):
    """The block passes its (image, text) input on as its output."""

    def __init__(self, io: BlockIO) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.io = io

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.io.pack(*self.io.inputs(args, kwargs))
