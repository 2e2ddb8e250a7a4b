"""The Method contract (design §3): what a plugin implements and what it is given."""

from __future__ import annotations

import abc
import dataclasses
import enum
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch

from lesionbench.streaming import StreamedArray


class Supervision(enum.Enum):
    NONE = "none"  # trained on healthy slices only
    IMAGE = "image"  # trained on slices with image-level labels (healthy / lesion)


@dataclass(frozen=True)
class SliceSet:
    """What a method sees of a split, never a lesion mask, adapter or cache path (design §3). images: float32 [N, C, H,
    W] in [0, 1] inside the brain, 0 outside; labels: int64 [N] (0 healthy, 1 lesion), in memory; brain: bool [N, H, W].
    images and brain are tensors (as tests and plugins build them) or read-only views streaming from the cache (the
    harness's; unpicklable): use ``len(s)``, ``.shape`` and ``s.images[index]`` / ``s.brain[index]`` (int, slice,
    list or LongTensor), which give tensors; never hold the whole split."""

    images: Any  # torch.Tensor or StreamedArray
    labels: torch.Tensor
    brain: Any  # torch.Tensor or StreamedArray
    modalities: tuple[str, ...]

    def __post_init__(self):
        n = self.images.shape[0]
        if self.labels.shape != (n,) or tuple(self.brain.shape) != (n, *self.images.shape[2:]):
            raise ValueError(
                f"SliceSet shapes disagree: images {tuple(self.images.shape)}, labels {tuple(self.labels.shape)}, "
                f"brain {tuple(self.brain.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def healthy(self) -> "SliceSet":
        """The healthy slices (label 0): a view of a streamed set (no copy), a copy of a tensor-backed one."""
        keep = self.labels == 0
        if isinstance(self.images, StreamedArray):
            rows = torch.nonzero(keep).flatten()
            return SliceSet(self.images.remap(rows), self.labels[keep], self.brain.remap(rows), self.modalities)
        return SliceSet(self.images[keep], self.labels[keep], self.brain[keep], self.modalities)


@dataclass
class AnomalyOutput:
    """maps: float [B, H, W] (higher = more anomalous); scores: float [B] slice scores, or None for the
    harness's default (99th percentile of the map inside the brain)."""

    maps: torch.Tensor
    scores: torch.Tensor | None = None


class FitLog(Protocol):
    """Handed to :meth:`Method.fit`."""

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a training curve point (tracked as ``train/<name>``)."""

    def evaluate(self, step: int) -> float:
        """Predict on the validation volumes, score them with masks the method never holds, report the
        value to the pruner when tuning, and return it (the objective, ``val/auprc`` by default)."""

    def artifact_image(self, name: str, image) -> None:
        """Store a PNG (a uint8 array [H, W] or [H, W, 3]) with the run."""

    def warn(self, message: str) -> None:
        """Record a warning about the fit with the run (a ``warning.*`` tag, shown with the cell's other
        warnings), e.g. a regularising term that never moved (``lesionbench.regularisation``)."""

    def cached(self, part: str, key: dict, train: Callable[[], dict], uses_objective: bool = False) -> dict:
        """A trained part (a DDPM, a classifier: a state dict), trained by ``train()`` only when no cache entry exists
        for (part, key, data, split, run seed; the objective too with ``uses_objective``: ``train()`` keeps its best on
        ``evaluate``). ``key``: the hyperparameters that shape the part (``lesionbench.parts`` derives it)."""


class NullLog:
    """A FitLog that records nothing; for using a method outside the harness."""

    def metric(self, name, value, step=None):
        pass

    def evaluate(self, step):
        return float("nan")

    def artifact_image(self, name, image):
        pass

    def warn(self, message):
        warnings.warn(message, RuntimeWarning, stacklevel=2)  # outside the harness nobody else shows it

    def cached(self, part, key, train, uses_objective=False):
        return train()


class Method(abc.ABC):
    """Base class of every method: set ``name``, ``description`` (one line), ``supervision``, ``Config`` (a dataclass
    of typed hyperparameters) and ``profiles`` (smoke, demo, quick, paper: Config overrides). ``fit`` trains (the loop's
    building blocks: ``lesionbench.training``); ``predict`` is inference only, not wrapped in ``no_grad``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    supervision: ClassVar[Supervision]
    Config: ClassVar[type]
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}
    dims: ClassVar[int] = 2
    #: whose trained parts ``log.cached`` shares (default: ``name``): equal parts of two methods train once
    parts_owner: ClassVar[str | None] = None
    #: hyperparameters whose values are part of the default row label, ``name[key=value]`` (a method's variants)
    label_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, device: torch.device | str = "cpu", modalities: tuple[str, ...] = (), seed: int = 0):
        self.config, self.seed = config, int(seed)  # the run seed: every random stream of the method derives from it
        self.device, self.modalities = torch.device(device), tuple(modalities)

    @classmethod
    def make_config(cls, profile: str = "quick", overrides: dict[str, Any] | None = None):
        """Config from the class defaults, then the profile, then ``overrides`` (values already typed)."""
        if profile not in cls.profiles:
            raise KeyError(f"method {cls.name!r} has no profile {profile!r}; it has {sorted(cls.profiles)}")
        values = {**cls.profiles[profile], **(overrides or {})}
        names = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(f"method {cls.name!r} has no hyperparameter {unknown}; it has {sorted(names)}")
        return cls.Config(**values)

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """Optuna: the hyperparameters worth tuning, as Config overrides (optional 3rd parameter ``fixed``: README)."""
        return {}

    @abc.abstractmethod
    def fit(self, train: SliceSet, val: SliceSet, log: FitLog) -> None: ...

    @abc.abstractmethod
    def predict(self, images: torch.Tensor) -> AnomalyOutput: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
