"""What ``--model`` names, found out before anything is loaded.

A model is a plugin's named model, an adapter's embedded random-weight pipeline, a local diffusers
folder or a hub id. Knowing which, and reading a stored pipeline's component configs (small JSON files,
no weights), lets the CLI refuse a misspelled model, a recipe for another model family, an unknown call
argument or an image size the model cannot take, before it spends seconds to minutes loading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ralu_core.errors import RaluError, did_you_mean
from ralu_core.pipelines.adapter import ChecksBeforeLoading, EmbedsModels, embedded_models
from ralu_core.plugins import Registry
from ralu_core.sampling.contract import ModelAdapter


@attrs.frozen(kw_only=True)
class ModelSource:
    """A ``--model`` value, resolved without loading: what it is and what is known of it."""

    name: str
    kind: str
    """``named``, ``embedded``, ``folder`` or ``hub``."""
    adapter: ModelAdapter | None
    """The adapter that will drive it, where known before loading."""
    pipeline_class: str | None
    """The diffusers pipeline class name, where known before loading."""
    folder: Path | None = None
    """Where its component configs can be read (a local folder, or the hub cache)."""

    def read_config(self, component: str) -> Mapping[str, Any] | None:
        """A component's ``config.json`` (e.g. ``vae``), or None where not available offline."""
        if self.folder is not None:
            path = self.folder / component / "config.json"
            if path.is_file():
                return dict(json.loads(path.read_text(encoding="utf-8")))
            return None
        embeds = self.adapter if isinstance(self.adapter, EmbedsModels) else None
        if self.kind == "embedded" and embeds is not None:
            return embeds.embedded_config(self.name, component)
        if self.kind == "hub":
            found = _hub_file(self.name, f"{component}/config.json")
            return None if found is None else dict(json.loads(Path(found).read_text(encoding="utf-8")))
        return None

    def tokenizer(self, component: str) -> Any | None:
        """A stored tokenizer (e.g. ``tokenizer_2``), loaded alone; None where not available offline."""
        folder = self.folder
        if folder is None and self.kind == "hub":
            found = _hub_file(self.name, f"{component}/tokenizer_config.json")
            folder = None if found is None else Path(found).parent.parent
        if folder is None or not (folder / component).is_dir():
            return None
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder / component))
        except (OSError, ValueError):
            return None

    def size_rule(self, coarsest_level: int) -> tuple[int, str] | None:
        """(multiple, why) every image side must satisfy, from the stored configs; None if unknown."""
        checks = self.adapter if isinstance(self.adapter, ChecksBeforeLoading) else None
        return None if checks is None else checks.size_rule_from_configs(self.read_config, coarsest_level)


def _hub_cached(repo: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on it
        return None
    try:
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # an id the hub library rejects is simply not cached
        return None
    return found if isinstance(found, str) else None


class HubRepoMissing(Exception):
    """The hub answered that no such repository exists (or it is private)."""


class HubUnreachable(Exception):
    """No answer from the hub at all (no network, a blocked host): asking again would only wait longer."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


HUB_PROBE_TIMEOUT = 10.0
"""Seconds to wait for the hub's first answer about a file, asked once with no retries."""


def _hub_file(repo: str, filename: str) -> str | None:
    """A small file of a hub repository: from the local cache, else downloaded unless offline (a few
    kilobytes of JSON, never weights). None where it cannot be had; `HubRepoMissing` when the hub says
    the repository does not exist; `HubUnreachable` when the hub does not answer.

    The hub is asked once, without retries, before any download: the hub library retries a failed
    request for about half a minute, and without a network each of those retries fails the same way."""
    cached = _hub_cached(repo, filename)
    if cached is not None or _offline():
        return cached
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - diffusers depends on it
        return None
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=HUB_PROBE_TIMEOUT)
    except RepositoryNotFoundError:
        raise HubRepoMissing(repo) from None
    except HfHubHTTPError:  # the hub answered: a gated repo, a missing file; the load reports it in full
        return None
    except Exception as exc:  # no answer: no network, a refused connection, a timeout
        raise HubUnreachable(f"{type(exc).__name__}: {exc}") from None
    try:
        return str(hf_hub_download(repo, filename))
    except Exception:  # lost between the two requests: the load reports it in full
        return None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _adapter_for_class(registry: Registry, class_name: str | None) -> ModelAdapter | None:
    for entry in registry.adapters.values():
        if class_name in entry.obj.pipeline_classes:
            return entry.obj  # type: ignore[no-any-return]
    return None


def known_model_names(registry: Registry) -> list[str]:
    """Named models and embedded pipelines ``--model`` accepts by name."""
    embedded = [n for e in registry.adapters.values() for n in embedded_models(e.obj)]
    return sorted({*registry.models, *embedded})


def resolve_model_source(registry: Registry, model: str) -> ModelSource:
    """Classify `model` and gather what can be known without loading it; a RaluError says what is
    wrong and lists the names it could have meant."""
    named = registry.models.get(model)
    if named is not None:
        adapter_entry = registry.adapters.get(named.obj.adapter)
        adapter = None if adapter_entry is None else adapter_entry.obj
        pipeline_class = adapter.pipeline_classes[0] if adapter is not None and adapter.pipeline_classes else None
        return ModelSource(
            name=model, kind="named", adapter=adapter, pipeline_class=pipeline_class, folder=named.obj.folder
        )
    for entry in registry.adapters.values():
        if model in embedded_models(entry.obj):
            adapter = entry.obj
            return ModelSource(name=model, kind="embedded", adapter=adapter, pipeline_class=adapter.pipeline_classes[0])
    path = Path(model).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not index.is_file():
            raise RaluError(f"--model {model}: the folder has no model_index.json, so it is not a diffusers pipeline")
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError) as exc:
            raise RaluError(f"--model {model}: cannot read {index}: {exc}") from None
        return ModelSource(
            name=model,
            kind="folder",
            adapter=_adapter_for_class(registry, class_name),
            pipeline_class=class_name,
            folder=path,
        )
    known = known_model_names(registry)
    if _looks_like_hub_id(model):
        try:
            hub_index = _hub_file(model, "model_index.json")
        except HubRepoMissing:
            raise RaluError(
                f"--model {model}: the hub has no such model (or it is private; log in with `hf auth login`)"
                f"{did_you_mean(model, known)}; named models: {', '.join(known)}"
            ) from None
        except HubUnreachable as exc:
            raise RaluError(
                f"--model {model}: there is no folder {path} here, and the hub cannot be reached to look for a "
                f"model with this id ({exc}). If you meant a folder, check the path; for a hub model, check the "
                f"network, or set HF_HUB_OFFLINE=1 to use what is cached; named models: {', '.join(known)}"
                f"{did_you_mean(model, known)}"
            ) from None
        class_name = None
        if hub_index is not None:
            class_name = json.loads(Path(hub_index).read_text(encoding="utf-8")).get("_class_name")
        elif _offline():
            raise RaluError(
                f"--model {model}: not a named model or a folder, and this hub id is not in the local cache while "
                f"HF_HUB_OFFLINE is set (`./dev` sets it); unset it to download, or use a named model: "
                f"{', '.join(known)}{did_you_mean(model, known)}"
            )
        return ModelSource(
            name=model, kind="hub", adapter=_adapter_for_class(registry, class_name), pipeline_class=class_name
        )
    raise RaluError(
        f"--model {model!r} is neither a named model, a folder, nor a hub id (owner/name){did_you_mean(model, known)}; "
        f"named models: {', '.join(known)}"
    )
