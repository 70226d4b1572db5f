"""Token-level reuse (RAS): the keys and values of every image token, per attention layer and per slot.

At a sparse step only the active tokens pass through the transformer, yet RAS's attention still sees
every token: an active token's query meets the fresh keys and values of the active tokens plus the
cached ones of the inactive tokens, as they were when last computed. This store holds them. A slot is
one row of the batch the model call evaluates: a (CFG branch, image) pair, so the unconditional and
the conditional pass of an image, and different images, never share entries.

The model call owns one store per stage (a new token set starts an empty one) and, around each
transformer evaluation, sets the route: which slots the batch rows are, and which tokens of the stage
their image tokens are (None: all of them, in order, a dense step). Each adapter's attention
processor hands the image part of its keys and values to `merge`, after whatever the model does to
them first (q/k norms, RoPE), and attends with what comes back. A dense evaluation records every
token; a sparse one writes the active tokens and returns the whole set.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import attrs
import torch


@attrs.frozen
class KVRoute:
    """Where the rows of one transformer evaluation belong in the store."""

    slots: tuple[int, ...]
    """The store slot of each batch row (a CFG branch of one image)."""
    active: torch.Tensor | None
    """(R, M) the stage's token index of each row's image tokens, in the order the model sees them;
    None: all tokens in order (a dense step, which records every token)."""

    @property
    def image_tokens(self) -> int | None:
        """How many image tokens each row carries (None: all the stage has)."""
        return None if self.active is None else int(self.active.shape[1])


class KVStore:
    """Keys and values of a stage's `num_tokens` image tokens, per layer, for `num_slots` batch rows."""

    def __init__(self, num_tokens: int, num_slots: int) -> None:
        self.num_tokens = num_tokens
        self.num_slots = num_slots
        self.route: KVRoute | None = None
        self._entries: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        # Not traced by torch.compile: the store is keyed by layer name, and a traced lookup would specialise each
        # block's graph on its layer (one graph per block instead of per block class: a recompilation storm).
        # Wrapped here, per store, rather than at class definition: `torch.compiler.disable` imports dynamo (a
        # second of start-up that commands loading no model should not pay); a store exists only inside a call.
        self.merge = torch.compiler.disable(self._merge)  # type: ignore[no-untyped-call]

    @contextmanager
    def routing(self, slots: Sequence[int], active: torch.Tensor | None) -> Iterator[None]:
        """Around one transformer evaluation: its rows are `slots`, their image tokens `active`."""
        slots = tuple(int(s) for s in slots)
        if active is not None and active.shape[0] != len(slots):
            raise ValueError(f"{len(slots)} batch rows but active tokens for {active.shape[0]}")
        if not all(0 <= s < self.num_slots for s in slots):
            raise ValueError(f"slots {slots} outside the store's {self.num_slots}")
        self.route = KVRoute(slots=slots, active=active)
        try:
            yield
        finally:
            self.route = None

    @property
    def nbytes(self) -> int:
        """Memory the cached keys and values take."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._entries.values())

    def _merge(
        self, layer: Hashable, key: torch.Tensor, value: torch.Tensor, seq_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens' keys and values of this evaluation (batch first, sequence along `seq_dim`) ->
        those of every token of the stage: a dense evaluation is recorded and returned as it is; a sparse
        one overwrites its active tokens' entries and returns every token's, the others as last computed."""
        route = self.route
        if route is None:
            raise RuntimeError("the key/value store was used outside a routed transformer evaluation")
        if route.active is None:
            if key.shape[seq_dim] != self.num_tokens:
                raise ValueError(
                    f"a dense evaluation must carry all {self.num_tokens} tokens, got {key.shape[seq_dim]}"
                )
            self._record(layer, key, value, route.slots)
            return key, value
        if layer not in self._entries and key.device.type == "meta":  # FLOPs counting: shapes only, nothing to miss
            full_key, full_value = (_full_length(t, seq_dim, self.num_tokens) for t in (key, value))
            self._record(layer, full_key, full_value, route.slots)
        if layer not in self._entries:
            raise RuntimeError(
                f"layer {layer!r} has no cached keys/values: a sparse step must follow a dense step of the same "
                "stage (where the layer ran)"
            )
        keys, values = self._entries[layer]
        index = _along(route.active, key, seq_dim)
        return _write(keys, route.slots, seq_dim, index, key), _write(values, route.slots, seq_dim, index, value)

    def _record(self, layer: Hashable, key: torch.Tensor, value: torch.Tensor, slots: tuple[int, ...]) -> None:
        entry = self._entries.get(layer)
        if entry is None or entry[0].shape[1:] != key.shape[1:] or entry[0].dtype != key.dtype:
            shape = (self.num_slots, *key.shape[1:])
            entry = self._entries[layer] = (
                key.new_zeros(shape),
                value.new_zeros((self.num_slots, *value.shape[1:])),
            )
        for stored, fresh in zip(entry, (key, value), strict=True):
            rows = _contiguous(slots)
            if rows is not None:
                stored[rows].copy_(fresh)
            else:
                stored.index_copy_(0, torch.tensor(slots, device=stored.device), fresh.to(stored.dtype))


def _full_length(tensor: torch.Tensor, seq_dim: int, tokens: int) -> torch.Tensor:
    shape = list(tensor.shape)
    shape[seq_dim] = tokens
    return tensor.new_empty(shape)


def _contiguous(slots: tuple[int, ...]) -> slice | None:
    """`slots` as a slice when they are consecutive (the usual case): a view of the store, no copy."""
    start = slots[0]
    return slice(start, start + len(slots)) if slots == tuple(range(start, start + len(slots))) else None


def _along(active: torch.Tensor, like: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """(R, M) token indices -> an index tensor shaped like `like`, varying along `seq_dim`."""
    shape = [1] * like.dim()
    shape[0], shape[seq_dim] = active.shape
    return active.to(like.device).reshape(shape).expand(like.shape)


def _write(
    stored: torch.Tensor, slots: tuple[int, ...], seq_dim: int, index: torch.Tensor, fresh: torch.Tensor
) -> torch.Tensor:
    rows = _contiguous(slots)
    if rows is not None:
        return stored[rows].scatter_(seq_dim, index, fresh.to(stored.dtype))
    where = torch.tensor(slots, device=stored.device)
    gathered = stored.index_select(0, where).scatter_(seq_dim, index, fresh.to(stored.dtype))
    stored.index_copy_(0, where, gathered)
    return gathered


@contextmanager
def swapped_processors(attention_modules: Mapping[str, Any], make: Callable[[Any, str], Any]) -> Iterator[None]:
    """While inside, each attention module runs `make(its processor, its name)`; the modules get their
    own processors back on exit, even after an error (set directly, so nothing else on them changes)."""
    originals = {name: module.processor for name, module in attention_modules.items()}
    try:
        for name, module in attention_modules.items():
            module.processor = make(originals[name], name)
        yield
    finally:
        for name, module in attention_modules.items():
            module.processor = originals[name]


class KeysValues:
    """A call part: RAS attention for one prepared call. A stage that keeps keys and values gets a fresh
    store; the adapter's stand-in processors go on the transformer the first time one is needed and come off
    when the call ends. Model knowledge comes in as two callables: the attention modules by name, and the
    stand-in for one of them."""

    def __init__(
        self, modules: Callable[[], Mapping[str, Any]], stand_in: Callable[[Any, str], Any], slots: int
    ) -> None:
        self.modules, self.stand_in, self.slots = modules, stand_in, slots
        self.store: KVStore | None = None
        self._processors: ExitStack | None = None
        self._swapped = False

    def begin_stage(self, stage: Any) -> None:
        self.store = None
        if stage.cached_attention:
            self.ensure_processors()
            self.store = KVStore(stage.num_tokens, self.slots)

    def ensure_processors(self) -> None:
        """Put the stand-in processors on the transformer for the rest of the run (once)."""
        if not self._swapped:
            assert self._processors is not None, "stand-in processors are for the duration of running()"
            self._processors.enter_context(swapped_processors(self.modules(), self.stand_in))
            self._swapped = True

    @contextmanager
    def running(self) -> Iterator[None]:
        with ExitStack() as processors:
            self._processors = processors
            try:
                yield
            finally:
                self._processors, self.store, self._swapped = None, None, False

    def routing(self, slots: Sequence[int], active: torch.Tensor | None) -> AbstractContextManager[None]:
        """Around one transformer evaluation: which store slots its rows are and which tokens they carry."""
        return nullcontext() if self.store is None else self.store.routing(slots, active)

    def nbytes(self) -> int:
        return 0 if self.store is None else self.store.nbytes


def counting_cached_attention(
    reuse: Callable[[Any], AbstractContextManager[Any]] | None,
    attention_modules: Callable[[Any], Mapping[str, Any]],
    processor: Callable[[Any, str, Callable[[], KVStore | None]], Any],
    attended_tokens: int,
    image_tokens: int,
    batch: int = 1,
) -> Callable[[Any], AbstractContextManager[Any]]:
    """A `reuse` for FLOPs counting on a meta-device model (see `FlopsProfile.forward`): on top of `reuse`,
    the adapter's stand-in `processor` in every attention module, so that a forward on `image_tokens` tokens
    attends to `attended_tokens`, as a RAS sparse step does. Counts the code that runs, not a formula."""

    def enter(model: Any) -> AbstractContextManager[Any]:
        stack = ExitStack()
        if reuse is not None:
            stack.enter_context(reuse(model))
        store = KVStore(attended_tokens, batch)

        def stand_in(original: Any, name: str) -> Any:
            return processor(original, name, lambda: store)

        stack.enter_context(swapped_processors(attention_modules(model), stand_in))
        active = torch.zeros((batch, image_tokens), dtype=torch.long, device="meta")
        stack.enter_context(store.routing(range(batch), active))
        return stack

    return enter


def processor_problems(attention_modules: Mapping[str, Any], expected: str) -> list[str]:
    """Modules whose processor is not diffusers' `expected` one (by class name) or whose q/k/v projections
    are fused: a stand-in processor computes what `expected` computes, nothing else. At most three named."""
    problems = []
    for name, module in attention_modules.items():
        processor = module.processor
        if isinstance(processor, StandInProcessor):  # ours, in place for this run: judge what it stands in for
            processor = processor.original
        kind = type(processor).__name__
        if kind != expected:
            problems.append(f"{name} uses {kind}, not diffusers' {expected}")
        elif getattr(module, "fused_projections", False):
            problems.append(f"{name} has fused q/k/v projections (unfuse them with `unfuse_qkv_projections()`)")
    return problems[:3] + ([f"and {len(problems) - 3} more"] if len(problems) > 3 else [])


class StandInProcessor:
    """Base of an adapter's stand-in attention processor: the processor it replaces (which it calls where
    nothing is asked of it), its layer's name in the store, and how to find the call's current store."""

    def __init__(self, original: Any, layer: str, store: Callable[[], KVStore | None]) -> None:
        self.original = original
        self.layer = layer
        self.store = store
