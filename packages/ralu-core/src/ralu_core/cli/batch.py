"""Many prompts into one folder: an image per (prompt, seed), a JSONL manifest, resumable, split across processes.

The work is the list of (prompt, seed) items of a prompt file. Each item has a fixed file name, so a
second run knows what is done. Every image is written atomically (temporary file, then rename) and so is
its record (one small JSON file per item, in a hidden folder, written after the image): a run killed at
any moment leaves complete images and records, or nothing, for each item, and the next run does what is
missing. The manifest (``manifest.jsonl``, one line per item in prompt and seed order) is rebuilt from the
records, also atomically, at the end of every run. A record says how its image was made (prompt, recipe,
model, settings), and a run that asks for something else is refused rather than counting it as done.

Under ``accelerate launch`` or ``torchrun`` every process takes every n-th item (accelerate's process
index and count, each process on its own device): no item is done twice or missed, whatever the number of
processes of this run or of the runs before it; the main process merges the manifest once all are done.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from ralu_core.errors import RaluError
from ralu_core.files import lock_folder, probe_writing, remove_stale_partials, save_image_atomically, write_atomically

RECORDS = ".ralu-records"
LOCK = ".ralu-lock"
"""The file a run holds an OS lock on while it writes a folder."""
MANIFEST = "manifest.jsonl"
MAX_PROMPT_FILE_BYTES = 64 * 2**20


@attrs.frozen
class WorkItem:
    """One image to make: the `index`-th prompt of the file with one seed."""

    index: int
    prompt: str
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.index:06d}-seed{self.seed}"


def read_prompts(path: Path) -> list[str]:
    """The prompts of a text file (one per line; blank lines and lines starting with ``#`` skipped) or of a
    ``.jsonl`` file (one JSON object with a ``prompt`` string per line).

    Lines end at a line feed (an optional carriage return before it is dropped) and nowhere else: U+2028,
    U+0085 or a form feed inside a prompt stays in it, so the line numbers that name the images are the
    ones an editor shows. Only a regular file is read (a FIFO would block, a device never end), and never
    more than `MAX_PROMPT_FILE_BYTES`."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # stat, not open: a FIFO is not waited on
            raise RaluError(f"--prompts {path}: not a regular file (a folder, FIFO or device); give a text file")
        with path.open("rb") as handle:
            data = handle.read(MAX_PROMPT_FILE_BYTES + 1)
        if len(data) > MAX_PROMPT_FILE_BYTES:
            raise RaluError(
                f"--prompts {path}: more than {MAX_PROMPT_FILE_BYTES:,} bytes is too large for a prompt file"
            )
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RaluError(f"--prompts {path}: not UTF-8 text") from None
    except OSError as exc:
        raise RaluError(f"--prompts {path}: cannot read it ({exc.strerror or exc})") from None
    prompts = _jsonl_prompts(path, text) if path.suffix.lower() == ".jsonl" else _text_prompts(text)
    if not prompts:
        raise RaluError(
            f"--prompts {path}: no prompts in it (one per line; blank lines and lines starting with # are "
            'skipped; a .jsonl file has one {"prompt": ...} object per line)'
        )
    return prompts


def _lines(text: str) -> list[str]:
    """The file's lines: split at line feeds only (see `read_prompts`)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _text_prompts(text: str) -> list[str]:
    lines = (line.strip() for line in _lines(text))
    return [line for line in lines if line and not line.startswith("#")]


def _jsonl_prompts(path: Path, text: str) -> list[str]:
    prompts = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RaluError(f"--prompts {path}: line {number} is not JSON ({exc.msg})") from None
        except RecursionError:
            raise RaluError(f"--prompts {path}: line {number} is nested too deeply to be a prompt record") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise RaluError(f'--prompts {path}: line {number} needs a non-empty "prompt" string')
        prompts.append(prompt)
    return prompts


def plan_items(prompts: Sequence[str], seeds: Sequence[int]) -> list[WorkItem]:
    """Every (prompt, seed), prompt by prompt."""
    return [WorkItem(index=i, prompt=p, seed=s) for i, p in enumerate(prompts) for s in seeds]


def shard(items: Sequence[WorkItem], rank: int, world: int) -> list[WorkItem]:
    """The items process `rank` of `world` makes: every `world`-th, from the `rank`-th."""
    if not 0 <= rank < world:
        raise ValueError(f"process {rank} of {world}")
    return list(items[rank::world])


def batches(items: Sequence[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class OutputFolder:
    """The images, their records and the manifest of one batch generation."""

    def __init__(self, root: Path, suffix: str = ".png") -> None:
        self.root = root
        self.suffix = suffix
        self.records = root / RECORDS
        self._lock: IO[str] | None = None

    def prepare(self) -> None:
        """Make the folders; refuse a file where the folder should be, or a folder that cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise RaluError(f"--out {self.root}: is a file; --out is a folder when --prompts is given")
        try:
            self.records.mkdir(parents=True, exist_ok=True)
            probe_writing(self.records)
            for folder in (self.root, self.records):  # what a run killed mid-write left (never a live run's)
                remove_stale_partials(folder)
        except OSError as exc:
            raise RaluError(f"--out {self.root}: cannot write there ({exc.strerror or exc})") from None

    def lock(self) -> None:
        """Own the folder until `unlock()` or this process ends: a second run on the same folder at the same
        time is refused, so it never claims images it did not make, nor mixes its images with another run's."""
        self._lock = lock_folder(self.root, LOCK, "--out")

    def unlock(self) -> None:
        handle = self._lock
        if handle is not None:
            handle.close()  # closing the file releases the lock
            self._lock = None

    def image_path(self, item: WorkItem) -> Path:
        return self.root / f"{item.stem}{self.suffix}"

    def is_done(self, item: WorkItem) -> bool:
        return self._record_path(item).is_file() and self.image_path(item).is_file()

    def _record_path(self, item: WorkItem) -> Path:
        return self.records / f"{item.stem}.json"

    def finished(self, items: Sequence[WorkItem], made_with: Mapping[str, Any]) -> set[WorkItem]:
        """The `items` already made, after refusing a folder whose finished images came from other prompts
        or settings.

        File names number the prompts and seeds, so an edited prompt file, another recipe or another size
        would otherwise count old images as done and mix two runs in one manifest. `made_with` is what
        every record of this run holds besides its prompt and seed (recipe, model, settings)."""
        done, conflicts, unreadable = set(), [], []
        for item in items:
            if self.is_done(item):
                done.add(item)
                record = self._read_record(item)
                if not record:
                    unreadable.append(item)
                    continue
                differences = _differences(record, {"prompt": item.prompt, "seed": item.seed, **made_with})
                if differences:
                    conflicts.append((item, differences))
        if unreadable:
            names = ", ".join(self._record_path(item).name for item in unreadable[:3])
            more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
            raise RaluError(
                f"--out {self.root}: the record of {len(unreadable)} image(s) is not a JSON object ({names}{more} in "
                f"{RECORDS}/), so what made them is unknown; delete those records and their images to remake them"
            )
        if conflicts:
            item, differences = conflicts[0]
            raise RaluError(
                f"--out {self.root}: {len(conflicts)} of its images were made otherwise than this run asks, e.g. "
                f"{self.image_path(item).name}: {'; '.join(differences)}. Give another --out, or run with the "
                f"prompt file and options that made them (delete those images to remake them)"
            )
        return done

    def _read_record(self, item: WorkItem) -> dict[str, Any]:
        try:
            record = json.loads(self._record_path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def save(self, item: WorkItem, image: Any, record: dict[str, Any]) -> None:
        """The image, then its record: a record always means a complete image."""
        save_image_atomically(image, self.image_path(item))
        line = json.dumps({**record, "file": self.image_path(item).name}, ensure_ascii=False)
        write_atomically(self._record_path(item), lambda handle: handle.write(line.encode("utf-8")))

    def merge_manifest(self, items: Sequence[WorkItem]) -> int:
        """Rewrite ``manifest.jsonl`` from the records of `items` that are done; returns how many."""
        lines = []
        for item in items:  # each record parsed and written anew: one JSON object per line, whatever the file held
            record = self._read_record(item) if self.is_done(item) else {}
            if record:
                lines.append(json.dumps(record, ensure_ascii=False))
        text = "".join(f"{line}\n" for line in lines).encode("utf-8")
        write_atomically(self.root / MANIFEST, lambda handle: handle.write(text))
        return len(lines)


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that it compares with a stored record."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _differences(record: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What `record` holds otherwise than `wanted`, a phrase each ("recipe ralu-flux-4x, now ralu-flux-7x");
    the settings are compared one by one, a setting given only once included."""
    found = []
    for key, value in wanted.items():
        was = record.get(key)
        if isinstance(value, Mapping) and isinstance(was, Mapping):
            for name in sorted(set(value) | set(was)):
                if was.get(name) != value.get(name):
                    found.append(f"{name} {_shown(was.get(name))}, now {_shown(value.get(name))}")
        elif was != value:
            found.append(f"{key} {_shown(was)}, now {_shown(value)}")
    return found


def _shown(value: Any) -> str:
    return "not given" if value is None else repr(value) if isinstance(value, str) and " " in value else str(value)


@attrs.frozen
class Processes:
    """This process's place among the processes of a launch (one process: index 0 of 1)."""

    index: int = 0
    count: int = 1
    device: str | None = None
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait_for_everyone(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Leave the launch's process group: a process that exits with it still open can abort at exit
        ("terminate called without an active exception", seen with gloo on the CPU)."""
        if self.state is not None:
            self.state.destroy_process_group()

    def sum_over_processes(self, counts: tuple[int, ...]) -> tuple[int, ...]:
        """Each count added up over every process of the launch (a collective: every process must call it)."""
        if self.state is None:
            return counts
        from accelerate.utils import gather_object

        gathered = gather_object([counts])
        return tuple(sum(column) for column in zip(*gathered, strict=True))


def launched_world_size() -> int:
    """How many processes ``accelerate launch`` or ``torchrun`` started (1 outside a launch), known before
    any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_processes() -> Processes:
    """accelerate's view of the launch (``accelerate launch``, ``torchrun``), or a single process."""
    if launched_world_size() <= 1:
        return Processes()
    try:
        from accelerate import PartialState
    except ImportError:
        raise RaluError(
            "this was started with several processes (WORLD_SIZE > 1), which needs the `accelerate` package: "
            "pip install accelerate"
        ) from None
    import torch

    # Without a GPU, accelerate runs several processes only when asked for the CPU (gloo backend).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(index=state.process_index, count=state.num_processes, device=str(state.device), state=state)
