"""What every model adapter guarantees, as checks each adapter's tests run (`AdapterConformance`), and its
RAS attention checked against its own dense forward (`cached_attention_outputs`).

An adapter that sets ``cached_attention`` stands its own processors in for the model's while a stage
keeps keys and values. Three things must then hold, on any pipeline it drives (tests of each adapter
package, and of third-party ones, assert them on `cached_attention_outputs`):

* a dense step through the stand-in processors equals the model's own dense step exactly;
* a sparse step that computes every token, in order, equals the dense step exactly;
* a sparse step on a subset of tokens (a different one per image) gives each computed token the output
  of the dense step, when the skipped tokens' keys and values are those the dense step recorded: the
  same state, evaluated twice.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from ralu_core.errors import UnsupportedPipelineError
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.measurement.host_sync import HostSyncRecorder
from ralu_core.measurement.profile import counting
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.pipelines.adapter import CachedAttention, adapter_facts, bind_to_adapter
from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.sampling.tokens import TokenState, gather_tokens
from ralu_core.strategies.base import StageInfo


@attrs.frozen
class CachedAttentionOutputs:
    """Velocities of one state at one sigma, evaluated in the ways a RAS stage evaluates it."""

    plain: torch.Tensor
    """Dense, the model's own processors (no store)."""
    recorded: torch.Tensor
    """Dense, through the stand-in processors (the store records every token)."""
    everything: torch.Tensor
    """Sparse over every token in order, after `recorded`."""
    active: torch.Tensor
    """(B, M) the subset each image computes next (distinct per image)."""
    subset: torch.Tensor
    """(B, M, D) sparse over `active`, the others' keys and values as `recorded` left them."""
    dropped: torch.Tensor
    """(B, M, D) the same subset with the others left out of attention (``inactive: drop``)."""
    cache_bytes: int
    """The store's size after these evaluations."""


def cached_attention_outputs(
    adapter: ModelAdapter, pipeline: Any, call_kwargs: dict[str, Any], *, keep: float = 0.5, sigma: float = 0.7
) -> CachedAttentionOutputs:
    """Prepare a call of `pipeline` with `call_kwargs` and evaluate its initial noise at `sigma` each way."""
    prepare = adapter.bind(pipeline, 0, (), call_kwargs).prepare
    assert prepare is not None, f"{adapter!r} does not sample {type(pipeline).__name__} token by token"
    call: Any = prepare()
    state = TokenState.full_resolution(call.initial_noise(), call.grid)
    at = torch.tensor(sigma)
    count = max(1, int(state.num_tokens * keep))
    generator = torch.Generator().manual_seed(0)
    picks = [torch.randperm(state.num_tokens, generator=generator)[:count] for _ in range(state.batch_size)]
    active = torch.stack(picks).to(state.values.device)
    everything = torch.arange(state.num_tokens, device=state.values.device).expand(state.batch_size, -1)
    stage = StageInfo(index=0, num_tokens=state.num_tokens, steps=2)
    with torch.no_grad(), call.running():
        call.begin_stage(stage)
        plain = call.predict(state, at, None)
        dropped = call.predict(state, at, active)
        call.begin_stage(attrs.evolve(stage, cached_attention=True))
        recorded = call.predict(state, at, None)
        all_tokens = call.predict(state, at, everything)
        subset = call.predict(state, at, active)
        cache_bytes = call.token_cache_nbytes()
    return CachedAttentionOutputs(
        plain=plain,
        recorded=recorded,
        everything=all_tokens,
        active=active,
        subset=subset,
        dropped=dropped,
        cache_bytes=cache_bytes,
    )


def dense_at(outputs: CachedAttentionOutputs) -> torch.Tensor:
    """The dense step's velocity at the subset's tokens, to compare with `outputs.subset`."""
    return gather_tokens(outputs.plain, outputs.active)


CANNY_SYNCS = Counter(
    {
        "ralu_core/strategies/selectors.py in CannyEdgeSelector._edges": 1,
        "ralu_core/strategies/selectors.py in CannyEdgeSelector._gradients": 1,
    }
)
"""The only waits for the device a step loop may have: OpenCV's edge and gradient maps, made on the CPU, go
back to the device once per Canny transition."""

PROMPTS = ("a red circle", "a blue square")


def seeded(seeds: int | list[int] | None) -> Any:
    """A call's `generator` argument: one generator for an int, one per seed for a list, None for None."""
    if seeds is None:
        return None
    return torch.Generator().manual_seed(seeds) if isinstance(seeds, int) else [seeded(s) for s in seeds]


class RecipesOnAPipeline:
    """What the mixins for what users load share (LoRAs, quantized weights, offloading): the adapter's baseline
    and a RALU and a RAS recipe, run on two prompts with a generator each, on pipelines `make_pipeline` builds."""

    baseline: ClassVar[str]
    recipes: ClassVar[tuple[str, ...]]
    """A RALU and a RAS recipe of the adapter (each kind of token change the user's pipeline must survive)."""
    height: ClassVar[int] = 64
    width: ClassVar[int] = 96
    steps: ClassVar[int] = 3
    """Steps of the baseline and plain calls."""
    call: ClassVar[Mapping[str, Any]] = {}

    def make_pipeline(self) -> Any:
        raise NotImplementedError

    def fresh(self) -> Any:
        pipe = self.make_pipeline()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, pipe: Any, recipe: Any, **extra: Any) -> torch.Tensor:
        """Latents of the two prompts, one generator each; `recipe` None: the plain pipeline."""
        kwargs: dict[str, Any] = {"height": self.height, "width": self.width, **self.call, "output_type": "latent"}
        if recipe is None or recipe == self.baseline:
            kwargs["num_inference_steps"] = self.steps
        generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
        call = pipe if recipe is None else accelerate(pipe, recipe)
        return call(prompt=list(PROMPTS), generator=generators, **kwargs, **extra).images.cpu()  # type: ignore[no-any-return]


class VariantsRefused:
    """pytest mixin: each of the adapter's `variants_not_driven` that diffusers has is refused before any work,
    naming what it adds and the pipeline to use instead, and that pipeline, made from the variant's components
    (``from_pipe``), runs `recipe`. Subclass as ``Test...``, set `recipe` and `call`, implement `make_pipeline`
    (the adapter's plain pipeline)."""

    recipe: ClassVar[str]
    call: ClassVar[Mapping[str, Any]] = {}

    def make_pipeline(self) -> Any:
        raise NotImplementedError

    def variant_components(self, variant: str, pipe: Any) -> dict[str, Any]:
        """Components a variant has that the plain pipeline has not (a tiny ControlNet), for ``from_pipe``."""
        return {}

    def test_a_variant_is_refused_saying_why_and_its_plain_pipeline_runs(self) -> None:
        import diffusers

        pipe = self.make_pipeline()
        registry = Registry.collect(create_plugin_manager())
        adapter = registry.resolve_adapter(pipe)
        plain = type(pipe)
        tried = 0
        for variant, adds in adapter.variants_not_driven.items():
            try:
                other = getattr(diffusers, variant).from_pipe(pipe, **self.variant_components(variant, pipe))
            except (AttributeError, TypeError, ValueError):
                continue  # this diffusers lacks it, or it needs a component the plain pipeline has not
            tried += 1
            expected = rf"{variant} is a variant of {plain.__name__} .+ does not drive yet: {re.escape(adds)}\. .+"
            assert_refused(
                functools.partial(accelerate, other, self.recipe), expected + rf"{plain.__name__}\.from_pipe"
            )
            back = plain.from_pipe(other)
            back.set_progress_bar_config(disable=True)
            out = accelerate(back, self.recipe)(
                "a", generator=torch.Generator().manual_seed(0), output_type="latent", height=64, width=64, **self.call
            )
            assert torch.isfinite(out.images).all(), variant
        assert tried, "no variant of this adapter could be built from its plain pipeline"


class RecipeConformance:
    """pytest mixin: every recipe that `recipe_plugins` registered for the adapter runs, a batch of images
    equals the same images made one by one (non-square, seeded per image), and the user's pipeline is left as
    it was (weights, processors, hooks, forward methods, scheduler, attributes). Subclass as ``Test...``, set the class
    attributes, implement `make_pipeline` (a tiny random-weight pipeline, built offline)."""

    adapter_name: ClassVar[str]
    recipe_plugins: ClassVar[tuple[str, ...]]
    """The plugins whose recipes are run (e.g. the adapter's own, or ``("caching",)``)."""
    height: ClassVar[int] = 64
    width: ClassVar[int] = 96
    """A non-square size that fits every recipe's coarsest level."""
    call: ClassVar[Mapping[str, Any]] = {}
    """Arguments every call takes (a short text length, to keep the tiny model quick)."""

    _pipelines: ClassVar[dict[type, Any]] = {}

    def make_pipeline(self) -> Any:
        raise NotImplementedError

    def pipeline(self) -> Any:
        """The class's pipeline, built once (tests must leave it as they found it)."""
        cls = type(self)
        if cls not in RecipeConformance._pipelines:
            pipe = self.make_pipeline()
            pipe.set_progress_bar_config(disable=True)
            RecipeConformance._pipelines[cls] = pipe
        return RecipeConformance._pipelines[cls]

    def registry(self) -> Registry:
        return Registry.collect(create_plugin_manager())

    def recipes(self) -> list[str]:
        registry = self.registry()
        return sorted(
            name
            for name, entry in registry.recipes.items()
            if entry.plugin in self.recipe_plugins and find_recipe(name, registry).model == self.adapter_name
        )

    def latents(self, recipe: str, prompts: Sequence[str], seeds: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """The final latents of `recipe` on the class's pipeline, one generator per image."""
        fast = accelerate(self.pipeline(), recipe)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        prompt: Any = prompts[0] if len(prompts) == 1 else list(prompts)
        kwargs = {"height": self.height, "width": self.width, **self.call, **kwargs, "output_type": "latent"}
        return fast(prompt=prompt, generator=generators, **kwargs).images  # type: ignore[no-any-return]

    def test_every_recipe_runs_and_a_batch_equals_single_calls(self) -> None:
        recipes = self.recipes()
        assert recipes, f"no recipes of {self.recipe_plugins} for {self.adapter_name!r} pipelines"
        for recipe in recipes:
            batch = self.latents(recipe, PROMPTS, (3, 4))
            singles = torch.cat([self.latents(recipe, [p], [s]) for p, s in zip(PROMPTS, (3, 4), strict=True)])
            assert batch.shape == singles.shape and torch.isfinite(batch).all(), recipe
            gap = float((batch - singles).abs().max())
            assert gap <= 1e-5, f"{recipe}: a batch differs from single calls by {gap}"

    def test_the_users_pipeline_is_left_as_it_was(self) -> None:
        pipe = self.make_pipeline()  # its own: the class's pipeline carries what earlier tests left
        pipe.set_progress_bar_config(disable=True)
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent"}
        # What the pipeline's own first call leaves (lazy state; decoding sets up the caches of Qwen-Image's VAE). Two
        # steps: one step of a scheduler with a terminal sigma (Qwen-Image's) leaves NaN timesteps behind, which no
        # comparison finds equal.
        pipe(prompt=PROMPTS[0], num_inference_steps=2, **{**kwargs, "output_type": "pt"})
        before = pipeline_snapshot(pipe)
        for recipe in self.recipes():
            accelerate(pipe, recipe)(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs)
        assert_same_snapshot(before, pipeline_snapshot(pipe))


class AdapterConformance(RecipeConformance):
    """pytest mixin: what every model adapter guarantees on the pipelines it drives, beyond its model knowledge.
    Its own recipes (`recipe_plugins`) run and a batch equals single calls; besides:

    * the baseline recipe reproduces the plain pipeline bit for bit;
    * a seed reproduces an image, another seed changes it;
    * RAS attention with cached keys and values equals the dense forward where it should;
    * the step loop waits for the device only where a recipe's strategy must (the Canny selector);
    * compiled blocks give the eager latents, and a second call compiles nothing;
    * a scheduler the user swapped in is followed (Karras, exponential, beta sigmas) or refused (NT-DM's own
      spacing against them, Heun's stepping, stochastic sampling);
    * every recipe is counted at full size on the meta device, RALU and RAS with fewer FLOPs than the baseline.
    """

    baseline: ClassVar[str]
    steps: ClassVar[int] = 3
    """Steps of the baseline calls."""
    full_size: ClassVar[str]
    """An architecture `ralu flops` counts (``flux-dev``)."""
    model_syncs: ClassVar[tuple[str, ...]] = ()
    """Places in the model's own diffusers code that wait for the device at every forward, in the plain pipeline
    as under ralu (matched in the innermost diffusers frame: ``in compute_text_seq_len_from_mask``): not counted
    against the step loop."""

    def adapter(self) -> ModelAdapter:
        return self.registry().resolve_adapter(self.pipeline())

    def test_the_baseline_recipe_is_the_plain_pipeline_bit_for_bit(self) -> None:
        pipe = self.pipeline()
        kwargs = {"height": self.height, "width": self.width, **self.call, "num_inference_steps": self.steps}
        generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
        plain = pipe(prompt=list(PROMPTS), generator=generators, output_type="latent", **kwargs)
        ours = self.latents(self.baseline, PROMPTS, (0, 1), num_inference_steps=self.steps)
        assert torch.equal(ours, plain.images)

    def test_a_seed_reproduces_an_image_and_another_seed_changes_it(self) -> None:
        for recipe in self.recipes():
            a, b = (self.latents(recipe, PROMPTS[:1], (11,)) for _ in range(2))
            c = self.latents(recipe, PROMPTS[:1], (12,))
            assert torch.equal(a, b) and (a - c).abs().max() > 1e-3, recipe

    def test_ras_attention_keeps_exact_keys_and_values(self) -> None:
        adapter = self.adapter()
        if not isinstance(adapter, CachedAttention):
            return  # the adapter keeps no keys and values: `inactive: kv-cache` is refused (adapter_problems)
        kwargs = {"prompt": list(PROMPTS), "height": self.height, "width": self.width, **self.call}
        outputs = cached_attention_outputs(adapter, self.pipeline(), kwargs)
        assert torch.equal(outputs.recorded, outputs.plain)
        torch.testing.assert_close(outputs.everything, outputs.plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(outputs.subset, dense_at(outputs), rtol=0, atol=1e-5)
        assert not torch.allclose(outputs.dropped, dense_at(outputs), atol=1e-4)  # the kept ones matter
        assert outputs.cache_bytes > 0

    def test_the_step_loop_waits_for_the_device_only_where_a_strategy_must(self) -> None:
        registry = self.registry()
        for recipe in self.recipes():
            runtime = resolve_recipe(find_recipe(recipe, registry), registry)
            canny = any(stage.selector is not None and stage.selector.name == "canny-edge" for stage in runtime.stages)
            with HostSyncRecorder.step_loop() as recorder:
                self.latents(recipe, PROMPTS, (0, 1))
            found = Counter(
                record.where
                for record in recorder.records
                if not any(m in f"{record.via} {record.caller}" for m in self.model_syncs)
            )
            assert found == (CANNY_SYNCS if canny else Counter()), f"{recipe}: {recorder.format_summary()}"

    def test_compiled_blocks_give_the_eager_latents_and_compile_once(self) -> None:
        torch._dynamo.reset()
        pipe = self.make_pipeline()
        pipe.set_progress_bar_config(disable=True)
        binding = self.adapter().bind(pipe, 0, (), {"prompt": PROMPTS[0], **self.call})
        fast = {recipe: accelerate(pipe, recipe) for recipe in self.recipes()}
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent"}

        def run(recipe: str) -> torch.Tensor:
            generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
            return fast[recipe](prompt=list(PROMPTS), generator=generators, **kwargs).images  # type: ignore[no-any-return]

        eager = {recipe: run(recipe) for recipe in fast}
        assert compile_denoiser(binding.denoiser, backend="eager") > 0
        for recipe in fast:
            first = run(recipe)
            compiled = graphs_compiled()
            second = run(recipe)
            assert graphs_compiled() == compiled, f"{recipe} compiled again on its second call"
            assert torch.equal(first, eager[recipe]) and torch.equal(second, eager[recipe]), recipe

    def test_a_scheduler_the_user_swapped_in_is_followed_or_refused(self) -> None:
        """Karras, exponential and beta sigmas: the baseline equals the plain pipeline, every recipe whose
        schedule takes the pipeline's sigmas runs, and one that spaces its own (NT-DM) is refused, naming the
        spacing. Heun's stepping and stochastic sampling: refused for every recipe, before any model runs."""
        import diffusers

        euler: Any = diffusers.FlowMatchEulerDiscreteScheduler
        heun: Any = diffusers.FlowMatchHeunDiscreteScheduler

        pipe = self.make_pipeline()
        pipe.set_progress_bar_config(disable=True)
        registry = self.registry()
        default = pipe.scheduler
        kwargs = {"height": self.height, "width": self.width, **self.call, "output_type": "latent"}

        def run(recipe: str | None, steps: int | None = None) -> torch.Tensor:
            call = pipe if recipe is None else accelerate(pipe, recipe)
            extra = {} if steps is None else {"num_inference_steps": steps}
            return call(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs, **extra).images  # type: ignore[no-any-return]

        for flag, label in (
            ("use_karras_sigmas", "Karras"),
            ("use_exponential_sigmas", "exponential"),
            ("use_beta_sigmas", "beta"),
        ):
            pipe.scheduler = euler.from_config(default.config, **{flag: True})
            assert torch.equal(run(self.baseline, self.steps), run(None, self.steps)), flag
            for recipe in self.recipes():
                runtime = resolve_recipe(find_recipe(recipe, registry), registry)
                if runtime.schedule.follows_pipeline_sigmas:
                    assert torch.isfinite(run(recipe)).all(), (recipe, flag)
                else:
                    assert_refused(functools.partial(run, recipe), f"would ignore the scheduler's {label} sigmas")
        refused = {
            "FlowMatchHeunDiscreteScheduler \\(two model calls per step\\)": heun.from_config(default.config),
            "stochastic_sampling=True": euler.from_config(default.config, stochastic_sampling=True),
        }
        for message, scheduler in refused.items():
            pipe.scheduler = scheduler
            for recipe in self.recipes():
                assert_refused(functools.partial(run, recipe), message)
        pipe.scheduler = default

    def test_every_recipe_is_counted_at_full_size_on_the_meta_device(self) -> None:
        registry = self.registry()
        adapter = self.adapter()
        profile = counting(adapter).flops_profile(self.full_size)
        forward = functools.lru_cache(maxsize=None)(profile.forward)  # the recipes share most token counts
        profile.forward = forward  # type: ignore[method-assign]
        height, width = 1024, 1024
        base = resolve_recipe(find_recipe(self.baseline, registry), registry)
        bind_to_adapter(adapter, base)
        baseline = recipe_cost(base, profile, height, width).total.tflops(False)
        assert baseline > 0
        for recipe in self.recipes():
            runtime = resolve_recipe(find_recipe(recipe, registry), registry)
            bind_to_adapter(adapter, runtime)
            cost = recipe_cost(runtime, profile, height, width).total.tflops(False)
            assert 0 < cost < baseline or recipe == self.baseline, f"{recipe}: {cost} of {baseline} TFLOPs"
        assert adapter_facts(adapter).name == self.adapter_name


def assert_refused(call: Callable[[], Any], pattern: str) -> None:
    """`call` raises UnsupportedPipelineError with a message matching `pattern` (pytest.raises, without pytest at
    import time: this module ships in ralu-core)."""
    try:
        call()
    except UnsupportedPipelineError as exc:
        assert re.search(pattern, str(exc)), f"refused, but not saying {pattern!r}: {exc}"
        return
    raise AssertionError(f"not refused (expected {pattern!r})")


def pipeline_snapshot(pipe: Any) -> dict[str, Any]:
    """What a call must leave as it was: every module's weights and its attributes (by value where plain, by
    identity otherwise: processors, hooks, forward methods), the pipeline's and its scheduler's attributes."""
    import copy

    plain = (int, float, str, bool, type(None), dict, list, tuple)

    def attributes(obj: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in vars(obj).items():
            if torch.is_tensor(value):
                found[key] = value.clone()
            elif isinstance(value, plain):
                found[key] = copy.deepcopy(value)
            elif not isinstance(value, torch.nn.Module):
                found[key] = value
        return found

    modules = {name: getattr(pipe, name) for name in vars(pipe) if isinstance(getattr(pipe, name), torch.nn.Module)}
    state: dict[str, Any] = {"pipeline": attributes(pipe), "scheduler": attributes(pipe.scheduler)}
    for name, module in modules.items():
        state[name] = {key: value.clone() for key, value in module.state_dict().items()}
        for sub_name, sub in module.named_modules():
            state[f"{name}.{sub_name}:attributes"] = {
                key: copy.copy(value) if isinstance(value, dict | list) else value
                for key, value in vars(sub).items()
                if key not in ("_parameters", "_buffers", "_modules")
            }
    return state


def assert_same_snapshot(before: Mapping[str, Any], after: Mapping[str, Any], where: str = "") -> None:
    assert before.keys() == after.keys(), f"{where}: {sorted(set(before) ^ set(after))}"
    for key, a in before.items():
        b = after[key]
        if isinstance(a, Mapping):
            assert isinstance(b, Mapping), f"{where}.{key}"
            assert_same_snapshot(a, b, f"{where}.{key}")
        elif torch.is_tensor(a):
            assert torch.is_tensor(b) and torch.equal(a, b), f"{where}.{key}"
        else:
            assert a is b or _equal(a, b), f"{where}.{key}: {a!r} became {b!r}"


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False
