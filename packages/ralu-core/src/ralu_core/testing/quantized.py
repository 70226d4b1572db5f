"""What an adapter guarantees for a pipeline whose transformer a user quantized (`QuantizedConformance`): with
torchao's weight-only int8 or float8, or loaded from a GGUF checkpoint (all run on a CPU), the baseline recipe
equals the plain quantized pipeline, RALU and RAS recipes run and stray from their unquantized images about as far
as the baseline does, the quantized weights are left as they were, and FLOPs are counted as before (ralu counts
the architecture's operations, not its number format).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from ralu_core.measurement.accounting import recipe_cost
from ralu_core.measurement.profile import counting
from ralu_core.pipelines.adapter import bind_to_adapter
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.recipes.model import Recipe, StrategyRef
from ralu_core.testing.conformance import RecipesOnAPipeline


def quantize_weights(transformer: torch.nn.Module, kind: str) -> None:
    """torchao's weight-only ``int8`` or ``float8``, in place, as a user would apply it (``quantize_``)."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    configs = {"int8": Int8WeightOnlyConfig, "float8": Float8WeightOnlyConfig}
    quantize_(transformer, configs[kind]())


_GGUF_FOLDERS: list[tempfile.TemporaryDirectory[str]] = []
"""Where the GGUF files of this process live until it exits (the loaded weights may map them)."""


def gguf_transformer(transformer: Any) -> Any:
    """`transformer` written to a GGUF file (its matrices as Q8_0, the rest float32, under diffusers' own names)
    and loaded back as a user loads a GGUF checkpoint: ``from_single_file`` with a ``GGUFQuantizationConfig``."""
    import diffusers
    import gguf
    import numpy as np

    folder = tempfile.TemporaryDirectory(prefix="ralu-gguf-")
    _GGUF_FOLDERS.append(folder)
    root = Path(folder.name)
    transformer.save_config(root / "transformer")
    writer = gguf.GGUFWriter(str(root / "transformer.gguf"), arch="ralu-test")
    for name, tensor in transformer.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:  # Q8_0 packs blocks of 32 values
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return type(transformer).from_single_file(
        str(root / "transformer.gguf"),
        quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32),  # type: ignore[no-untyped-call]
        config=str(root),
        subfolder="transformer",
        torch_dtype=torch.float32,
        local_files_only=True,
    )


def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight as a plain tensor (a quantized one dequantized), to tell whether a call changed any."""
    found = {}
    for name, tensor in module.state_dict().items():
        plain = tensor.dequantize() if hasattr(tensor, "dequantize") and type(tensor) is not torch.Tensor else tensor
        found[name] = plain.detach().clone()
    return found


def picking_by_chance(name: str) -> Recipe:
    """Recipe `name` with its upsample selectors replaced by ``random`` at the same ratio. Which tokens an edge
    selector picks is a threshold on the image: on a tiny random model, int8 rounding can flip a few picks and
    then those tokens differ by a whole stage. Picked by a seeded draw instead, the int8 and float images can
    be compared token by token."""
    registry = Registry.collect(create_plugin_manager())
    recipe = find_recipe(name, registry)
    stages = []
    for stage in recipe.stages:
        ratio = stage.selector.params.get("ratio") if stage.selector is not None else None
        if ratio is not None:
            stage = attrs.evolve(stage, selector=StrategyRef(name="random", params={"ratio": ratio}))
        stages.append(stage)
    return attrs.evolve(recipe, name=f"{name}-random-picks", stages=tuple(stages))


def needs_quantizers(cls: type) -> type:
    """Skip a test class where torchao and gguf are not installed (./dev's environment), saying so; the nox test
    sessions install both, so there the tests run."""
    import importlib.util

    import pytest

    missing = [name for name in ("torchao", "gguf") if importlib.util.find_spec(name) is None]
    reason = f"{' and '.join(missing)} not installed (the nox test sessions install them; ./dev's environment does not)"
    return pytest.mark.skipif(bool(missing), reason=reason)(cls)  # type: ignore[no-any-return]


QUANTIZED = ("int8", "float8", "gguf")
"""torchao's weight-only int8 and float8, and a GGUF checkpoint in Q8_0 loaded through diffusers."""


class QuantizedConformance(RecipesOnAPipeline):
    """pytest mixin: the adapter's baseline, RALU and RAS recipes on a pipeline whose transformer holds torchao
    int8 or float8 weights, or GGUF Q8_0 ones. Subclass as ``Test...``, set the class attributes and implement
    `make_pipeline`."""

    gguf: ClassVar[bool] = True
    """Whether the transformer class loads single files (``from_single_file``), so a GGUF checkpoint."""
    drift: ClassVar[float] = 5.0
    """How much further a quantized recipe's latents may lie from its float ones than the quantized baseline's
    from its own (max abs): the recipes run more steps than the 3-step baseline, and each adds its rounding."""

    def quantized(self, kind: str) -> Any:
        pipe = self.fresh()
        if kind == "gguf":
            pipe.transformer = gguf_transformer(pipe.transformer)
        else:
            quantize_weights(pipe.transformer, kind)
        kinds = {type(p.data).__name__ for p in pipe.transformer.parameters()}
        assert kinds - {"Tensor"}, f"torchao left every weight a plain tensor ({kinds})"
        return pipe

    def kinds(self) -> tuple[str, ...]:
        return QUANTIZED if self.gguf else QUANTIZED[:2]

    def test_the_baseline_is_the_plain_quantized_pipeline(self) -> None:
        for kind in self.kinds():
            pipe = self.quantized(kind)
            assert torch.equal(self.run(pipe, self.baseline), self.run(pipe, None)), kind

    def test_recipes_run_on_quantized_weights_and_leave_them_as_they_were(self) -> None:
        plain = self.fresh()
        references = {recipe: self.run(plain, picking_by_chance(recipe)) for recipe in self.recipes}
        float_baseline = self.run(plain, self.baseline)
        for kind in self.kinds():
            pipe = self.quantized(kind)
            before = weights_of(pipe.transformer)
            own = float((self.run(pipe, self.baseline) - float_baseline).abs().max())  # the format's own drift
            for recipe in self.recipes:
                assert torch.isfinite(self.run(pipe, recipe)).all(), recipe
                gap = float((self.run(pipe, picking_by_chance(recipe)) - references[recipe]).abs().max())
                assert gap <= self.drift * own, f"{recipe}: {kind} weights moved it by {gap}, the baseline by {own}"
            after = weights_of(pipe.transformer)
            assert before.keys() == after.keys()
            assert all(torch.equal(before[name], after[name]) for name in before), kind

    def test_flops_are_counted_as_for_the_unquantized_model(self) -> None:
        registry = Registry.collect(create_plugin_manager())
        plain, pipe = self.make_pipeline(), self.quantized("int8")
        adapter = registry.resolve_adapter(pipe)
        kwargs = {"height": self.height, "width": self.width, **self.call}
        for recipe in (self.baseline, *self.recipes):
            counts = []
            for each in (plain, pipe):
                runtime = resolve_recipe(find_recipe(recipe, registry), registry)
                bind_to_adapter(adapter, runtime)
                profile = counting(adapter).pipeline_flops_profile(each, kwargs)
                cost = recipe_cost(runtime, profile, self.height, self.width, steps=28, baseline_steps=28)
                counts.append(cost.total.tflops(True))
            assert counts[0] == counts[1] > 0, recipe
