"""Plugin manager factory and the registry of everything plugins provide.

Nothing loads at import time and nothing lives in module globals: each `accelerate()` (or CLI
command) builds its own plugin manager, so two accelerated pipelines never share state. Every
first-party package registers through the ``ralu`` entry-point group exactly as a third party
would, and a plugin that fails to import or registers something malformed is reported by name.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata as metadata
import inspect
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pluggy

from ralu_core.errors import PluginError, UnsupportedPipelineError
from ralu_core.plugins import hookspecs
from ralu_core.plugins.image_metric import ImageMetric
from ralu_core.plugins.models import NamedModel
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.strategies.base import STRATEGY_KINDS, Strategy

ENTRY_POINT_GROUP = "ralu"

KIND_HOOKS: dict[str, str] = {
    "token_selector": "ralu_register_token_selectors",
    "transition": "ralu_register_transitions",
    "schedule": "ralu_register_schedules",
    "feature_cache": "ralu_register_feature_caches",
}
KIND_LABELS: dict[str, str] = {
    "token_selector": "token selector",
    "transition": "transition",
    "schedule": "schedule",
    "feature_cache": "feature cache",
}


@attrs.frozen(kw_only=True)
class PluginInfo:
    """Where a registered plugin comes from (shown by ``ralu plugins``)."""

    name: str
    distribution: str | None = None
    version: str | None = None


def create_plugin_manager(
    *, load_entry_points: bool = True, plugins: Iterable[object] = (), entry_points: Iterable[Any] | None = None
) -> pluggy.PluginManager:
    """A new plugin manager with ralu's hook specs, loaded from the ``ralu`` entry points.

    `plugins` are registered after the entry points (so their adapters win resolution).
    `entry_points` replaces the installed ones (tests simulate third-party distributions this way).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    if load_entry_points:
        found = entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(found, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                distribution=getattr(dist, "name", None),
                version=getattr(dist, "version", None),
            )
            origin = f"plugin {ep.name!r}" + (f" from distribution {info.distribution}" if info.distribution else "")
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"ralu {origin} failed to load ({ep.value}): {type(exc).__name__}: {exc}") from exc
            if pm.is_registered(plugin):
                continue
            try:
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                raise PluginError(f"ralu {origin} could not be registered: {exc}") from exc
            infos[ep.name] = info
    for plugin in plugins:
        # A plugin handed in code may also be installed (its entry point loaded the same module, or an
        # editable install's egg-info beside its source made it findable): it is the same plugin, registered once.
        if pm.is_registered(plugin):
            continue
        name = pm.get_canonical_name(plugin)
        holder = pm.get_plugin(name)
        if holder is not None:
            raise PluginError(
                f"ralu plugin {name!r} cannot be registered: another plugin holds that name ({holder!r:.80}); "
                "rename one of them"
            )
        pm.register(plugin, name=name)
        infos[name] = PluginInfo(name=name)
    pm.ralu_plugin_info = infos  # type: ignore[attr-defined]
    return pm


def plugin_info(pm: pluggy.PluginManager, plugin_name: str) -> PluginInfo:
    infos: dict[str, PluginInfo] = getattr(pm, "ralu_plugin_info", {})
    return infos.get(plugin_name, PluginInfo(name=plugin_name))


@attrs.frozen(kw_only=True)
class Registration:
    kind: str
    name: str
    obj: Any
    plugin: str


@attrs.define
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    pm: pluggy.PluginManager
    strategies: dict[str, dict[str, Registration]] = attrs.field(factory=dict)
    adapters: dict[str, Registration] = attrs.field(factory=dict)
    recipes: dict[str, Registration] = attrs.field(factory=dict)
    metrics: dict[str, Registration] = attrs.field(factory=dict)
    prompt_sets: dict[str, Registration] = attrs.field(factory=dict)
    models: dict[str, Registration] = attrs.field(factory=dict)

    @classmethod
    def collect(cls, pm: pluggy.PluginManager) -> Registry:
        registry = cls(pm=pm, strategies={kind: {} for kind in STRATEGY_KINDS})
        for kind, hook_name in KIND_HOOKS.items():
            registry._run(hook_name, functools.partial(registry._strategy_register, kind=kind))
        registry._run("ralu_register_model_adapters", registry._adapter_register)
        registry._run("ralu_register_recipes", registry._recipe_register)
        registry._run("ralu_register_image_metrics", registry._metric_register)
        registry._run("ralu_register_prompt_sets", registry._prompt_set_register)
        registry._run("ralu_register_models", registry._model_register)
        return registry

    def _run(self, hook_name: str, make_register: Callable[[str], Callable[..., None]]) -> None:
        """Call the hook through pluggy's caller (so wrappers, tracing and monitoring see it), with one
        `register` whose entries are credited to the plugin whose hookimpl is running."""
        hook = getattr(self.pm.hook, hook_name)

        def register(*args: Any, **kwargs: Any) -> None:
            make_register(_CURRENT_PLUGIN.get())(*args, **kwargs)

        with _credited(hook, hook_name):
            hook(register=register)

    def _add(self, table: dict[str, Registration], entry: Registration) -> None:
        existing = table.get(entry.name)
        if existing is not None:
            raise PluginError(
                f"ralu plugin {entry.plugin!r} registers {KIND_LABELS.get(entry.kind, entry.kind)} "
                f"{entry.name!r}, which plugin {existing.plugin!r} already registered; rename one of them"
            )
        table[entry.name] = entry

    def _strategy_register(self, plugin: str, *, kind: str) -> Callable[[type[Strategy]], None]:
        base = STRATEGY_KINDS[kind]

        def register(cls: type[Strategy]) -> None:
            label = KIND_LABELS[kind]
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(
                    f"ralu plugin {plugin!r} registered {cls!r} as a {label}, but it does not "
                    f"subclass {base.__module__}.{base.__qualname__}"
                )
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"ralu plugin {plugin!r} registered {label} {cls.__qualname__} without a `name`")
            if not attrs.has(cls.Config):
                raise PluginError(f"ralu plugin {plugin!r}: {label} {name!r} needs an attrs `Config` class")
            self._add(self.strategies[kind], Registration(kind=kind, name=name, obj=cls, plugin=plugin))

        return register

    def _adapter_register(self, plugin: str) -> Callable[[ModelAdapter], None]:
        def register(adapter: ModelAdapter) -> None:
            if not isinstance(adapter, ModelAdapter):
                raise PluginError(f"ralu plugin {plugin!r} registered {adapter!r}, which is not a ModelAdapter")
            self._add(self.adapters, Registration(kind="adapter", name=adapter.name, obj=adapter, plugin=plugin))

        return register

    def _recipe_register(self, plugin: str) -> Callable[[str, Path], None]:
        def register(name: str, path: Path) -> None:
            self._add(self.recipes, Registration(kind="recipe", name=name, obj=Path(path), plugin=plugin))

        return register

    def _metric_register(self, plugin: str) -> Callable[[Any], None]:
        def register(metric: Any) -> None:
            if not isinstance(metric, ImageMetric):
                raise PluginError(f"ralu plugin {plugin!r} registered {metric!r}, which is not an ImageMetric")
            self._add(self.metrics, Registration(kind="image metric", name=metric.name, obj=metric, plugin=plugin))

        return register

    def _prompt_set_register(self, plugin: str) -> Callable[[str, Callable[[int], list[str]]], None]:
        def register(name: str, make: Callable[[int], list[str]]) -> None:
            self._add(self.prompt_sets, Registration(kind="prompt set", name=name, obj=make, plugin=plugin))

        return register

    def _model_register(self, plugin: str) -> Callable[[Any], None]:
        def register(model: Any) -> None:
            if not isinstance(model, NamedModel):
                raise PluginError(f"ralu plugin {plugin!r} registered {model!r}, which is not a NamedModel")
            self._add(self.models, Registration(kind="model", name=model.name, obj=model, plugin=plugin))

        return register

    # --- look-ups -------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.strategies[kind])

    def strategy_class(self, kind: str, name: str) -> type[Strategy] | None:
        entry = self.strategies[kind].get(name)
        return None if entry is None else entry.obj

    def adapter_named(self, name: str) -> ModelAdapter:
        entry = self.adapters.get(name)
        if entry is None:
            raise KeyError(f"no model adapter named {name!r}; installed: {', '.join(sorted(self.adapters)) or 'none'}")
        adapter: ModelAdapter = entry.obj
        return adapter

    def resolve_adapter(self, pipeline: Any) -> ModelAdapter:
        """The first plugin answer (in pluggy's call order) that is not None; a resolver that raises or
        answers something other than a ModelAdapter is reported by its plugin's name."""
        hook = self.pm.hook.ralu_resolve_model_adapter
        with _credited(hook, "ralu_resolve_model_adapter", check=_is_adapter_or_none):
            adapter: ModelAdapter | None = hook(pipeline=pipeline)  # firstresult: the first answer not None
        if adapter is None:
            name = type(pipeline).__name__
            for entry in self.adapters.values():
                adds = getattr(entry.obj, "variants_not_driven", {}).get(name)
                if adds is not None:
                    plain, driven = entry.obj.pipeline_classes[0], ", ".join(entry.obj.pipeline_classes)
                    raise UnsupportedPipelineError(
                        f"{name} is a variant of {plain} that ralu's {entry.obj.name!r} adapter does not drive yet: "
                        f"{adds}. Accelerate a pipeline it drives ({driven}): {plain}.from_pipe(pipe) shares this "
                        "pipeline's components; docs/compatibility.md lists what is supported"
                    )
            known = (
                ", ".join(f"{a.obj.name} ({', '.join(a.obj.pipeline_classes)})" for a in self.adapters.values())
                or "none installed"
            )
            raise UnsupportedPipelineError(
                f"ralu has no model adapter for {type(pipeline).__name__}; adapters: {known}. "
                "Install the adapter package for this model (e.g. ralu-flux) or write one (see docs/)."
            )
        return adapter


_CURRENT_PLUGIN: contextvars.ContextVar[str] = contextvars.ContextVar("ralu_current_plugin", default="unknown")
"""The plugin whose hookimpl is running (inside `_credited`)."""


@contextlib.contextmanager
def _credited(hook: Any, hook_name: str, check: Callable[[str, Any], None] | None = None) -> Iterator[None]:
    """For one call of `hook`: each hookimpl runs with its plugin's name in `_CURRENT_PLUGIN`, a failure in it
    becomes a PluginError naming that plugin, and `check(plugin, answer)` sees each answer."""
    impls = [(impl, impl.function) for impl in hook.get_hookimpls()]
    for impl, function in impls:
        impl.function = _crediting(function, impl.plugin_name, hook_name, check)
    try:
        yield
    finally:
        for impl, function in impls:
            impl.function = function


def _crediting(
    function: Callable[..., Any], plugin: str, hook_name: str, check: Callable[[str, Any], None] | None
) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(function):  # a wrapper hookimpl: its code around `yield`

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _running_as(plugin, hook_name):
                return (yield from function(*args, **kwargs))

        return wrapper

    def call(*args: Any, **kwargs: Any) -> Any:
        with _running_as(plugin, hook_name):
            answer = function(*args, **kwargs)
        if check is not None:
            check(plugin, answer)
        return answer

    return call


@contextlib.contextmanager
def _running_as(plugin: str, hook_name: str) -> Iterator[None]:
    """`plugin`'s hookimpl runs: its name is current, and a failure in it is a PluginError naming it."""
    token = _CURRENT_PLUGIN.set(plugin)
    try:
        yield
    except PluginError:
        raise
    except Exception as exc:
        raise _failure(plugin, hook_name, exc) from exc
    finally:
        _CURRENT_PLUGIN.reset(token)


def _failure(plugin: str, hook_name: str, exc: Exception) -> PluginError:
    return PluginError(f"ralu plugin {plugin!r} failed in {hook_name}: {type(exc).__name__}: {exc}")


def _is_adapter_or_none(plugin: str, answer: Any) -> None:
    if answer is not None and not isinstance(answer, ModelAdapter):
        raise PluginError(
            f"ralu plugin {plugin!r} answered ralu_resolve_model_adapter with {type(answer).__name__} "
            f"{answer!r:.60}; it must return a ModelAdapter or None"
        )
