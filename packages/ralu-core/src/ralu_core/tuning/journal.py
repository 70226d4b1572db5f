"""What a tune has measured, kept so that a killed tune resumes where it stopped.

A tune is deterministic given its scores, so the scores (per candidate, prompt and seed) and the baseline's
images are all that is kept: a restarted tune counts the FLOPs again, reads the scores it has, and runs only
the rest. In a folder, each score is one line of ``scores.jsonl``, appended and synced (a line cut by a kill
is ignored), and each baseline image is written atomically; the folder is locked while a tune runs, and one
made by a different tune (other model, prompts, seeds, size or metrics) is refused. Each score line also keeps the
seconds its image took, so that a resumed tune's time budget counts the time the earlier runs spent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any, Protocol

import attrs
import numpy as np

from ralu_core.errors import RaluError
from ralu_core.files import lock_folder, probe_writing, remove_stale_partials, write_atomically
from ralu_core.plugins.image_metric import Image

SETTINGS = "settings.json"
SCORES = "scores.jsonl"
BASELINE = "baseline"
LOCK = ".tune.lock"


@attrs.frozen(order=True)
class SampleKey:
    """One (prompt, seed) pair, the prompt by its index in the tune's prompt list."""

    prompt: int
    seed: int


class Journal(Protocol):
    def scored(self, candidate: str, sample: SampleKey) -> dict[str, float] | None:
        """The metric values kept for this candidate and sample, or None."""
        ...

    def record(self, candidate: str, sample: SampleKey, scores: dict[str, float], seconds: float = 0.0) -> None:
        """Keep what this process measured, and the seconds it took (in a folder: in its own scores file)."""
        ...

    @property
    def spent_before(self) -> float:
        """Seconds this process's earlier runs of the same tune spent making the images kept here."""
        ...

    def remember(self, candidate: str, sample: SampleKey, scores: dict[str, float]) -> None:
        """Keep, in memory only, what another process measured (its own file holds it)."""
        ...

    def baseline(self, sample: SampleKey) -> Image | None: ...

    def keep_baseline(self, sample: SampleKey, image: Image) -> None: ...


@attrs.define
class MemoryJournal:
    """A journal for a tune that keeps nothing once it returns."""

    scores: dict[tuple[str, SampleKey], dict[str, float]] = attrs.field(factory=dict)
    images: dict[SampleKey, Image] = attrs.field(factory=dict)

    def scored(self, candidate: str, sample: SampleKey) -> dict[str, float] | None:
        return self.scores.get((candidate, sample))

    def record(self, candidate: str, sample: SampleKey, scores: dict[str, float], seconds: float = 0.0) -> None:
        self.scores[(candidate, sample)] = dict(scores)

    @property
    def spent_before(self) -> float:
        return 0.0

    def remember(self, candidate: str, sample: SampleKey, scores: dict[str, float]) -> None:
        self.scores[(candidate, sample)] = dict(scores)

    def baseline(self, sample: SampleKey) -> Image | None:
        return self.images.get(sample)

    def keep_baseline(self, sample: SampleKey, image: Image) -> None:
        self.images[sample] = image


def _score_value(value: Any) -> float:
    return float("inf") if value == "Infinity" else float("-inf") if value == "-Infinity" else float(value)


def _json_score(value: float) -> Any:
    return "Infinity" if value == float("inf") else "-Infinity" if value == float("-inf") else value


def _is_scores_file(name: str) -> bool:
    """``scores.jsonl`` (the first process's) or ``scores.<rank>.jsonl``."""
    parts = name.split(".")
    return name == SCORES or (len(parts) == 3 and parts[0] == "scores" and parts[1].isdigit() and parts[2] == "jsonl")


def precheck_folder(root: Path, known: dict[str, Any], label: str = "--out") -> None:
    """Refuse, before a model loads, a folder a tune cannot use: a file, a folder of other files, or the folder
    of a tune whose `known` settings (those fixed before the model loads) differ."""
    if root.exists() and not root.is_dir():
        raise RaluError(f"{label} {root}: is a file; give a folder for the tune's outputs")
    if not root.is_dir():
        return
    journal = FolderJournal(root, known, label)
    settings = root / SETTINGS
    if settings.is_file() and not settings.is_symlink():
        journal._check_same_tune(settings, only_known=True)
    elif journal._foreign_entries():
        raise RaluError(
            f"{label} {root}: holds files that no tune wrote ({', '.join(journal._foreign_entries()[:3])}); "
            "give an empty or new folder"
        )


class FolderJournal(MemoryJournal):
    """The journal of a tune in `root` (see the module's docstring)."""

    def __init__(self, root: Path, settings: dict[str, Any], label: str = "--out", rank: int = 0) -> None:
        super().__init__()
        self.root, self.label, self.rank = root, label, rank
        self._lock: IO[str] | None = None
        self._spent_before = 0.0
        self._settings = json.loads(json.dumps(settings, sort_keys=True))

    @property
    def scores_path(self) -> Path:
        """This process's scores file (one per process of a launch, so that none appends to another's)."""
        return self.root / (SCORES if self.rank == 0 else f"scores.{self.rank}.jsonl")

    def join(self) -> None:
        """For the other processes of a launch, once the first has opened the folder: check its settings and read
        every score kept so far."""
        settings_path = self.root / SETTINGS
        if self.scores_path.is_symlink() or not settings_path.is_file() or settings_path.is_symlink():
            raise RaluError(f"{self.label} {self.root}: process {self.rank} found no settings or a planted link")
        self._check_same_tune(settings_path)
        self._read_scores()

    def open(self) -> None:
        """Make, check and lock the folder, then read what an earlier run of the same tune kept."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise RaluError(f"{self.label} {root}: is a file; give a folder for the tune's outputs")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe_writing(root)
        except OSError as exc:
            raise RaluError(f"{self.label} {root}: cannot write there ({exc.strerror or exc})") from None
        self._lock = lock_folder(root, LOCK, self.label)  # first: then no other tune writes here
        planted = [name for name in (BASELINE, SETTINGS) if (root / name).is_symlink()]
        planted += sorted(p.name for p in root.iterdir() if _is_scores_file(p.name) and p.is_symlink())
        if planted or ((root / BASELINE).exists() and not (root / BASELINE).is_dir()):
            self.close()
            raise RaluError(
                f"{self.label} {root}: {', '.join(planted) or BASELINE} is a link or not what a tune writes; a tune "
                "never writes through one. Give a new folder"
            )
        (root / BASELINE).mkdir(exist_ok=True)
        for folder in (root, root / BASELINE):
            remove_stale_partials(folder)
        settings_path = root / SETTINGS
        if settings_path.is_file() and not settings_path.is_symlink():
            self._check_same_tune(settings_path)
        elif self._foreign_entries():
            raise RaluError(
                f"{self.label} {root}: holds files that no tune wrote ({', '.join(self._foreign_entries()[:3])}); "
                "give an empty or new folder"
            )
        text = json.dumps(self._settings, indent=2, sort_keys=True).encode("utf-8")
        write_atomically(settings_path, lambda handle: handle.write(text))
        self._read_scores()

    def _foreign_entries(self) -> list[str]:
        ours = {BASELINE, LOCK}
        return sorted(p.name for p in self.root.iterdir() if p.name not in ours and not _is_scores_file(p.name))

    def _check_same_tune(self, path: Path, only_known: bool = False) -> None:
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict):
            raise RaluError(f"{self.label} {self.root}: its {SETTINGS} is unreadable; give a new folder")
        names = set(self._settings) if only_known else set(found) | set(self._settings)
        differences = [name for name in sorted(names) if found.get(name) != self._settings.get(name)]
        if differences:
            raise RaluError(
                f"{self.label} {self.root}: was made by a different tune (its {', '.join(differences)} differ); give "
                "another folder, or the same model, prompts, seeds, speed-ups, size and metrics to resume it"
            )

    def _read_scores(self) -> None:
        """Read the journal back; a last line cut by a kill is dropped from the file, so that the next record
        starts a line of its own."""
        own = self.scores_path
        if own.is_file() and not own.is_symlink():
            data = own.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(own, "r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
        lines: list[tuple[bool, str]] = []
        for path in sorted(self.root.iterdir()):
            if _is_scores_file(path.name) and path.is_file() and not path.is_symlink():
                text = path.read_text(encoding="utf-8", errors="replace")
                lines += [(path.name == own.name, line) for line in text.splitlines()]
        self._spent_before = 0.0
        for mine, line in lines:
            try:
                entry = json.loads(line)
                key = (str(entry["candidate"]), SampleKey(int(entry["prompt"]), int(entry["seed"])))
                values = {str(k): _score_value(v) for k, v in dict(entry["scores"]).items()}
                seconds = float(entry.get("seconds", 0.0))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a kill
            self.scores[key] = values
            if mine and math.isfinite(seconds) and seconds > 0:
                self._spent_before += seconds

    @property
    def spent_before(self) -> float:
        return self._spent_before

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def record(self, candidate: str, sample: SampleKey, scores: dict[str, float], seconds: float = 0.0) -> None:
        super().record(candidate, sample, scores)
        entry = {
            "candidate": candidate,
            "prompt": sample.prompt,
            "seed": sample.seed,
            "scores": {k: _json_score(v) for k, v in sorted(scores.items())},
            "seconds": round(seconds, 3),
        }
        path = self.scores_path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o644)  # never through a link someone placed there
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _image_path(self, sample: SampleKey) -> Path:
        return self.root / BASELINE / f"prompt{sample.prompt:04d}-seed{sample.seed}.npy"

    def baseline(self, sample: SampleKey) -> Image | None:
        image = super().baseline(sample)
        path = self._image_path(sample)
        if image is None and path.is_file() and not path.is_symlink():
            try:
                loaded = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                return None
            if loaded.dtype == np.uint8 and loaded.ndim == 3 and loaded.shape[-1] == 3:
                image = loaded
                self.images[sample] = image
        return image

    def keep_baseline(self, sample: SampleKey, image: Image) -> None:
        super().keep_baseline(sample, image)
        write_atomically(self._image_path(sample), lambda handle: np.save(handle, image, allow_pickle=False))
