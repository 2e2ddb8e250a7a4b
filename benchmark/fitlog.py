"""The FitLog the harness hands a method (design §3): training curves to the tracked run, validation through
masks the method never holds (``log.evaluate``, which also feeds the pruner), warnings, and the trained-parts
cache (``log.cached``)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lesionbench import metrics as M
from lesionbench.config import stable_hash
from lesionbench.method import Method
from lesionbench.planning import DEFAULT_OBJECTIVE, SLICE_LEVEL_OBJECTIVES
from lesionbench.prediction import predict_cases
from lesionbench.preprocessing import PreparedCase
from lesionbench.seeding import restore_rng, rng_state



class HarnessLog:
    """The FitLog handed to a method: training curves, and validation through the harness's masks."""

    def __init__(self, run, method: Method, val_cases: list[PreparedCase], batch: int, objective: str,
                 on_evaluate: Callable[[int, float], None] | None = None, on_step: Callable[[str], None] | None = None,
                 parts_dir: Path | None = None, parts_key: list | None = None):
        self.run, self.method, self.val_cases, self.batch = run, method, val_cases, batch
        self.parts_dir, self.parts_key = parts_dir, parts_key
        self.parts_reused: list[str] = []
        self.objective, self.on_evaluate, self.on_step = objective, on_evaluate, on_step
        self.evaluations: list[tuple[int, float]] = []
        self.warnings: list[str] = []  # the method's (log.warn), reported with the cell's
        self._last_step = -1

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        if self.run is not None:
            self.run.metric(f"train/{name}", value, step)
        if self.on_step is not None:
            self.on_step(f"step {step}: {name} {float(value):.4g}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.run is not None:
            self.run.tag("warning." + stable_hash(message, 6), message[:500])

    def evaluate(self, step: int) -> float:
        scored, _ = predict_cases(self.method, self.val_cases, self.batch)
        value = M.evaluate_split(scored).get(self.objective, float("nan")) if scored else float("nan")
        self.evaluations.append((step, value))
        if self.run is not None:
            self.run.metric(f"fit/val_{self.objective}", value, step)
        if self.on_evaluate is not None:
            self.on_evaluate(step, value)  # the pruner may stop the trial here
        return value

    def artifact_image(self, name: str, image) -> None:
        if self.run is None:
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.png"
            Image.fromarray(np.asarray(image)).save(path)
            self.run.artifact(path, "fit")

    def cached(self, part: str, key: dict, train: Callable[[], dict], uses_objective: bool = False) -> dict:
        """Trained parts cached by a hash of (method, part, its key, data, split, seed) (design §3); the
        method is its ``parts_owner`` when it sets one (a method reusing another method's parts). A part whose
        training keeps its best checkpoint on ``evaluate`` (``uses_objective``) adds the objective to the hash
        when it is not the default, so entries cached before keep their names."""
        if self.parts_dir is None:
            return train()
        owner = getattr(self.method, "parts_owner", None) or self.method.name
        objective = [self.objective] if uses_objective and self.objective != DEFAULT_OBJECTIVE else []
        digest = stable_hash([owner, part, key, self.parts_key] + objective, 20)
        path = self.parts_dir / f"{owner}-{part}-{digest}.pt"
        entry = self._load_part(path) if path.exists() else None
        if entry is not None:
            self.parts_reused.append(part)
            if self.run is not None:
                self.run.tag(f"reused.{part}", digest)
            if isinstance(entry, dict) and "part_state" in entry:  # older entries hold the bare state
                restore_rng(entry["rng_after"])  # the rest of fit draws what it would have drawn after training
                return entry["part_state"]
            return entry
        state = train()
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing the workdir write their own temp file
        torch.save({"part_state": state, "rng_after": rng_state()}, tmp)
        tmp.replace(path)
        return state

    def _load_part(self, path: Path):
        """A cached part; None when the file is unreadable (truncated, corrupt), which is set aside as
        ``*.corrupt`` and reported, so the part is trained again. A file that torch's weights-only loader
        refuses (it holds more than tensors and plain values) is never opened otherwise: the cell fails naming it."""
        import pickle

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None  # another worker set it aside a moment ago
        except pickle.UnpicklingError as exc:
            if str(exc).startswith("Weights only load failed"):
                raise RuntimeError(
                    f"trained part {path}: refused by torch.load(weights_only=True): it holds objects other than "
                    f"tensors and plain values, which lesionbench never writes; inspect or delete it (the part is "
                    f"then trained again)") from None
            error = exc
        except Exception as exc:  # torch reports truncation as RuntimeError or OSError, without the path
            error = exc
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
        except OSError:
            pass  # another worker set it aside first
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]
        message = f"trained part {path} is unreadable ({type(error).__name__}: {reason}); set aside as {aside.name}, trained again"
        warnings.warn(message, stacklevel=3)
        if self.run is not None:
            self.run.tag("warning." + stable_hash(message, 6), message[:500])
        if self.on_step is not None:
            self.on_step(message)
        return None

    @property
    def used_val_voxel_labels(self) -> bool:
        """Validation voxel masks were read: log.evaluate ran on at least one validation case with a voxel
        objective (without a validation case, e.g. open-ms's split, every call returns NaN and reads nothing)."""
        return bool(self.evaluations) and bool(self.val_cases) and self.objective not in SLICE_LEVEL_OBJECTIVES

