"""Find the places where the host would wait for the device while sampling, on any device, the CPU included.

On a GPU every such wait stalls the CPU until all queued kernels have run, so the next kernels are
launched late and the GPU idles: the sampling loop should have none but those a strategy truly needs
(the Canny selector runs OpenCV on the CPU). `HostSyncRecorder` is a ``TorchDispatchMode``: it sees every
aten op and records those that need the device's data on the host, with the place in ralu's code (and in
diffusers', where the call went through it) that asked. It does not depend on the device, so the same
test catches a sync on the CPU that would stall a GPU:

* ``scalar``: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``,
  ``if t:``, formatting a tensor), and ops that answer a Python value (``torch.equal``,
  ``torch.allclose``);
* ``dynamic-shape``: ops whose output shape depends on the data (``nonzero``, ``torch.where(mask)``,
  boolean-mask indexing and assignment, ``masked_select``, ``unique``, ``bincount``,
  ``repeat_interleave`` with tensor repeats and no ``output_size``);
* ``host-data``: tensors made from Python or NumPy data (``torch.tensor(...)``, ``torch.from_numpy``):
  on an accelerator a blocking host-to-device copy, where they are made on or moved to it;
* ``device-copy``: copies between the CPU and another device (``.cpu()``, ``.to(device)``, an index
  on the wrong device), blocking unless ``non_blocking`` (seen only where there are two devices).

What it cannot see: ``.tolist()`` and ``.numpy()`` read the data without dispatching an op (on a GPU
tensor they copy it, which this records as a ``device-copy``), and ``.cpu()`` / ``.to(device)`` of a
tensor already there dispatch nothing, so on the CPU a CPU tensor moved "to the device" goes unseen.
On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` (or ``"error"``) is the driver-level cross-check:
it warns at each synchronising call, without saying which code asked.

`HostSyncRecorder.step_loop()` records only inside the engine's sampling loop (its steps, transitions
and per-step selections), not the preparation or output around it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALAR_OPS = frozenset({"aten._local_scalar_dense", "aten.equal", "aten.allclose", "aten.is_nonzero"})
"""Ops that hand a tensor's value to Python."""

DYNAMIC_SHAPE_OPS = frozenset(
    {
        "aten.nonzero",
        "aten.argwhere",
        "aten.masked_select",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.bincount",
    }
)
"""Ops whose output shape depends on the data: the host must read it to allocate the output."""

HOST_DATA_OPS = frozenset({"aten.lift_fresh"})
"""What ``torch.tensor`` and ``torch.from_numpy`` dispatch for the tensor they made from host data."""

_INDEX_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})

_PACKAGES = ("ralu_core", "ralu_flux", "ralu_sd3", "ralu_caching", "ralu_bench")


@attrs.frozen
class SyncRecord:
    """One op that makes the host wait for the device, and who asked for it."""

    op: str
    """The aten op, without its overload (``aten._local_scalar_dense``)."""
    kind: str
    """``scalar``, ``dynamic-shape``, ``host-data`` or ``device-copy`` (see the module docstring)."""
    site: str
    """The innermost frame in ralu's packages: ``ralu_core/sampling/tokens.py:97 in TokenState.coarsest_level``."""
    via: str | None = None
    """The innermost diffusers frame, where the op ran inside diffusers; None otherwise."""
    caller: str | None = None
    """The innermost frame outside torch (``file.py:line in function``): the code that ran the op, where that is
    not ralu's (a plugin, a user's hook, a test)."""

    @property
    def where(self) -> str:
        """The site without its line number: ``ralu_core/sampling/tokens.py in TokenState.coarsest_level``."""
        place, _, function = self.site.partition(" in ")
        return f"{place.rsplit(':', 1)[0]} in {function}"

    def __str__(self) -> str:
        via = f" (in {self.via})" if self.via else ""
        caller = f" (from {self.caller})" if self.caller and self.caller != self.site else ""
        return f"{self.site}{via}{caller}: {self.op} [{self.kind}]"


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _cross_device(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether these tensors (non-scalar: 0-d CPU tensors are read as Python numbers) span the CPU and another
    real device."""
    devices = {t.device.type for t in tensors if t.dim() > 0} - {"meta"}
    return "cpu" in devices and len(devices) > 1


def sync_kind(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """The kind of host-device synchronisation the op `name` (``aten.x``) with these arguments is; None: none."""
    if name in SCALAR_OPS:
        return "scalar"
    if name in DYNAMIC_SHAPE_OPS:
        return "dynamic-shape"
    if name == "aten.repeat_interleave" and kwargs.get("output_size") is None and _tensors(args[:2]):
        return "dynamic-shape"
    if name in HOST_DATA_OPS:  # made on the CPU: a copy only where moved to a device later (unseen on the CPU)
        return "host-data" if args[0].device.type == "cpu" else "device-copy"
    if name in _INDEX_OPS and len(args) > 1:
        indices = _tensors(args[1])
        if any(i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "dynamic-shape"
        if _cross_device([args[0], *indices]):
            return "device-copy"
        return None
    if name == "aten._to_copy" and kwargs.get("device") is not None:
        devices = {args[0].device.type, torch.device(kwargs["device"]).type} - {"meta"}
        return "device-copy" if "cpu" in devices and len(devices) > 1 else None
    tensors = _tensors(list(args)) + _tensors(list(kwargs.values()))
    return "device-copy" if _cross_device(tensors) else None


def _package_roots() -> dict[Path, str]:
    roots = {}
    for package in _PACKAGES:
        module = sys.modules.get(package)
        if module is not None and module.__file__:
            roots[Path(module.__file__).parent] = package
    return roots


def _diffusers_root() -> Path | None:
    module = sys.modules.get("diffusers")
    return Path(module.__file__).parent if module is not None and module.__file__ else None


def _label(frame: FrameType, root: Path, package: str) -> str:
    path = Path(frame.f_code.co_filename).relative_to(root).as_posix()
    return f"{package}/{path}:{frame.f_lineno} in {frame.f_code.co_qualname}"


class HostSyncRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves it untyped
    """Records the ops that would make the host wait for the device (see the module docstring).

    ``with HostSyncRecorder() as recorder: ...`` records everything run inside; `scope` (code objects)
    keeps only the ops run while one of them is on the Python stack. Records are kept in order; `summary`
    groups them by site.
    """

    def __init__(self, scope: Collection[CodeType] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.scope = None if scope is None else frozenset(scope)
        self.records: list[SyncRecord] = []
        self._here = Path(__file__)
        self._roots = _package_roots()
        diffusers = _diffusers_root()
        self._diffusers = diffusers
        self._torch = Path(torch.__file__).parent

    @classmethod
    def step_loop(cls) -> HostSyncRecorder:
        """A recorder scoped to the sampling engine's loop over stages and steps."""
        from ralu_core.sampling.engine import SamplingEngine

        return cls(scope=[SamplingEngine.run_stages.__code__])

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        kind = sync_kind(name, args, kwargs)
        if kind is not None:
            self._record(name, kind)
        return func(*args, **kwargs)

    def _record(self, op: str, kind: str) -> None:
        site = via = caller = None
        innermost_is_ralu = False
        in_scope = self.scope is None
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            if not in_scope and code in self.scope:  # type: ignore[operator]
                in_scope = True
            path = Path(code.co_filename)
            if site is None and path != self._here:
                site = self._site(frame, path)
            if via is None and self._diffusers is not None and path.is_relative_to(self._diffusers):
                via = _label(frame, self._diffusers, "diffusers")
            if caller is None and path != self._here and not path.is_relative_to(self._torch):
                caller = f"{path.name}:{frame.f_lineno} in {code.co_qualname}"
                innermost_is_ralu = site is not None
            frame = frame.f_back
        if in_scope:
            outside = None if caller is None or innermost_is_ralu else caller
            self.records.append(
                SyncRecord(op=op, kind=kind, site=site or outside or "(unknown)", via=via, caller=outside)
            )

    def _site(self, frame: FrameType, path: Path) -> str | None:
        for root, package in self._roots.items():
            if path.is_relative_to(root):
                return _label(frame, root, package)
        return None

    def summary(self) -> Counter[SyncRecord]:
        """How often each (op, site, diffusers frame) came up, in order of first occurrence."""
        return Counter(self.records)

    def sites(self) -> set[str]:
        """The ralu sites (``file:line in function``) that asked for a sync."""
        return {record.site for record in self.records}

    def format_summary(self) -> str:
        """One line per site: count, place, op, kind."""
        lines = [f"{count:5d}  {record}" for record, count in self.summary().items()]
        return "\n".join(lines) if lines else "no host-device synchronisation"


def record_syncs(run: Callable[[], Any], scope: Collection[CodeType] | None = None) -> HostSyncRecorder:
    """Run `run()` under a recorder and return it."""
    recorder = HostSyncRecorder(scope)
    with recorder:
        run()
    return recorder
