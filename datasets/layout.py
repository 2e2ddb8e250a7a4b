"""File layouts of NIfTI collections: where each case's modalities, lesion labels and brain mask lie.

A layout is a few path patterns relative to the data root, each holding ``{case}`` where the case id
sits (the case-id rule) and shell wildcards for the rest, e.g. ``{case}/{case}_flair.nii.gz`` (BraTS 2021)
or ``*/preprocessed/{case}_flair_pp.nii`` (ISBI 2015). A pattern may be a list of alternatives: the first
that matches wins (BraTS 2021 and 2023 naming in one layout). Cases are found by matching every pattern
against the files under the root. The ``brats`` and ``open-ms`` adapters are layouts written in Python;
the ``nifti`` adapter reads one from a TOML file (see ``layouts/*.toml``).
"""

from __future__ import annotations

import glob
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lesionbench.config import ConfigError
from lesionbench.filenames import safe_name
from lesionbench.nifti import CaseFiles, check_case_headers, lesion_voxel_count, load_case
from lesionbench.volume import MODALITIES, DataError, DatasetAdapter, Volume

#: Slice size for real data when the user does not set data.size. Adult brains at 1 mm fit a box of about
#: 170 px, so 192 keeps scale 1 there: every lesion voxel of the shared MS patients survives, where 128
#: (scale 0.76) loses small lesions outright (the measurement: docs/calibration.md#data-and-preprocessing).
REAL_DATA_SIZE = 192


@dataclass(frozen=True)
class Layout:
    modalities: dict[str, tuple[str, ...]]  # canonical name -> patterns (alternatives)
    lesion: tuple[str, ...]  # label map patterns
    brain: tuple[str, ...] = ()  # brain-mask patterns; none: the non-zero voxels (a zero background is checked)
    brain_optional: bool = False  # a case without a brain-mask file falls back to its non-zero voxels
    lesion_values: tuple[int, ...] | None = None  # labels that count as lesion; None: every label > 0
    known_labels: tuple[int, ...] | None = None  # labels a label map may hold; None: any integer
    case_regex: str = r"[^/]+"  # what a case id looks like

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"layout: unknown modality names {unknown}; canonical names are {MODALITIES}")
        for pattern in (*(p for ps in self.modalities.values() for p in ps), *self.lesion, *self.brain):
            if "{case}" not in pattern:
                raise ConfigError(f"layout pattern {pattern!r} has no {{case}} placeholder")


def _pattern_regex(pattern: str, case_regex: str) -> re.Pattern:
    """``{case}/{case}_t1.nii*`` -> a regex over relative paths, capturing the case id."""
    out, seen_case = [], False
    for token in re.split(r"(\{case\}|\*|\?)", pattern):
        if token == "{case}":
            out.append("(?P=case)" if seen_case else f"(?P<case>{case_regex})")
            seen_case = True
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


class LayoutAdapter(DatasetAdapter):
    """A NIfTI collection described by a :class:`Layout`.

    Loads only the modalities asked for (``data.modalities``; all of the layout's by default), so a
    FLAIR-only run reads FLAIR files only and a case lacking an unused modality still works.
    """

    layout: ClassVar[Layout]
    needs_root = True
    data_defaults: ClassVar[dict] = {"size": REAL_DATA_SIZE, "clip_low": 0.1, "clip_high": 99.9}
    affine_tolerance: ClassVar[float] = 1e-3

    def __init__(self, root: Path | None = None, modalities: tuple[str, ...] = (), **options):
        super().__init__(root, modalities=tuple(modalities))
        if self.root is None:
            raise ConfigError(f"dataset {self.name!r} reads files: give --root {self.name}=PATH")
        if not self.root.is_dir():
            raise ConfigError(f"dataset {self.name}: data folder {self.root} does not exist")
        missing = [m for m in modalities if m not in self.layout.modalities]
        if missing:
            raise DataError(f"dataset {self.name}: modality {missing} requested but the layout has only {tuple(self.layout.modalities)}")
        self.modalities = tuple(modalities) or tuple(self.layout.modalities)
        self._files: dict[str, CaseFiles] = {}

    def cases(self) -> list[str]:
        found = set()
        patterns = [*(p for ps in self.layout.modalities.values() for p in ps), *self.layout.lesion]
        for pattern in patterns:
            regex = _pattern_regex(pattern, self.layout.case_regex)
            for path in self.root.glob(pattern.replace("{case}", "*")):
                match = regex.fullmatch(path.relative_to(self.root).as_posix())
                if match:
                    found.add(match["case"])
        return sorted(found)

    def _find(self, case: str, what: str, patterns: tuple[str, ...], required: bool = True) -> Path | None:
        for pattern in patterns:
            matches = sorted(self.root.glob(pattern.replace("{case}", glob.escape(case))))
            if len(matches) > 1:
                raise DataError(f"case {case}: {what} pattern {pattern!r} matches several files: {', '.join(map(str, matches))}")
            if matches:
                return matches[0]
        if required:
            expected = " or ".join(str(self.root / p.replace("{case}", case)) for p in patterns)
            raise DataError(f"case {case}: missing {what} file {expected}")
        return None

    def case_files(self, case: str) -> CaseFiles:
        """The case's files; a missing or ambiguous one is a :class:`DataError` naming the expected path."""
        files = CaseFiles(
            {m: self._find(case, f"{m} image", self.layout.modalities[m]) for m in self.modalities},
            self._find(case, "lesion label", self.layout.lesion),
            self._find(case, "brain mask", self.layout.brain, required=not self.layout.brain_optional) if self.layout.brain else None,
        )
        return files

    def load(self, case: str) -> Volume:
        return load_case(case, self.case_files(case), self.layout.lesion_values, self.layout.known_labels, self.affine_tolerance)

    def lesion_voxels(self, case: str) -> int | None:
        path = self._find(case, "lesion label", self.layout.lesion)
        return lesion_voxel_count(case, path, self.layout.lesion_values, self.layout.known_labels)

    def check(self, case: str) -> None:
        """Header-level checks (files present, not truncated, one grid) without reading the voxels."""
        check_case_headers(case, self.case_files(case), self.affine_tolerance)

    def source_file(self, case: str) -> Path:
        """The file whose grid (shape, affine) maps are written in (``--save-maps``)."""
        return next(iter(self.case_files(case).modalities.values()))

    def fingerprint(self, case: str) -> str:
        parts = [self.name, case, repr(self.layout), sorted((k, str(v)) for k, v in self.options.items())]
        for path in self.case_files(case).all():
            st = path.stat()
            parts.append((str(path.resolve()), st.st_mtime_ns, st.st_size))
        return repr(parts)


# -- layouts from TOML files (the `nifti` adapter) ---------------------------------------------------

LAYOUT_DIR = Path(__file__).parent / "layouts"


def _patterns(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a pattern or a list of patterns, got {value!r}")


def _ints(value, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a list of integers, got {value!r}")


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def nifti_dataset(path: str | Path) -> type[LayoutAdapter]:
    """A dataset adapter class from a layout TOML file (its keys are explained in ``layouts/brats2013-deepmedic.toml``)."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"dataset file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"dataset file {path} is not valid TOML: {exc}") from None
    known = {"name", "description", "root", "modalities", "lesion", "brain", "brain_optional", "lesion_values", "known_labels",
             "case_regex", "size"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"dataset file {path}: unknown keys {unknown}; known keys: {sorted(known)}")
    for key in ("modalities", "lesion"):
        if key not in spec:
            raise ConfigError(f"dataset file {path}: missing key {key!r}")
    if not isinstance(spec["modalities"], dict) or not spec["modalities"]:
        raise ConfigError(f"dataset file {path}: [modalities] must map canonical names to patterns")
    layout = Layout(
        modalities={m: _patterns(p, f"{path}: modalities.{m}") for m, p in spec["modalities"].items()},
        lesion=_patterns(spec["lesion"], f"{path}: lesion"),
        brain=_patterns(spec["brain"], f"{path}: brain") if "brain" in spec else (),
        brain_optional=_flag(spec.get("brain_optional", False), f"{path}: brain_optional"),
        lesion_values=_ints(spec.get("lesion_values"), f"{path}: lesion_values"),
        known_labels=_ints(spec.get("known_labels"), f"{path}: known_labels"),
        case_regex=spec.get("case_regex", r"[^/]+"),
    )
    root = spec.get("root")
    attrs = {
        "name": safe_name(spec.get("name", path.stem), f"dataset file {path}: name", forbid="="),
        "description": spec.get("description", f"NIfTI layout from {path.name}"),
        "layout": layout,
        "data_defaults": {**LayoutAdapter.data_defaults, "size": int(spec.get("size", REAL_DATA_SIZE))},
        "default_root": (path.parent / root) if root else None,  # relative to the TOML file
        "layout_file": path,
        "__module__": __name__,
    }
    return type(f"Nifti_{attrs['name']}", (NiftiLayout,), attrs)


class NiftiLayout(LayoutAdapter):
    """Base of the adapters made from TOML files by :func:`nifti_dataset`."""

    default_root: ClassVar[Path | None] = None
    layout_file: ClassVar[Path | None] = None

    def __init__(self, root: Path | None = None, modalities: tuple[str, ...] = (), **options):
        super().__init__(root if root is not None else self.default_root, modalities, **options)


class Nifti(DatasetAdapter):
    """Registered under ``nifti`` so that ``lesionbench list`` shows it; the layout comes from a file."""

    name = "nifti"
    description = "any NIfTI collection described by a layout TOML file: --datasets my-data.toml --root my-data=PATH"
    needs_root = True

    def __init__(self, root=None, **options):
        raise ConfigError("the nifti adapter is configured by a layout file: give the file instead of `nifti` "
                          "(run --datasets path/to/layout.toml, check-data --dataset path/to/layout.toml) "
                          f"(examples: {', '.join(sorted(p.name for p in LAYOUT_DIR.glob('*.toml')))} in {LAYOUT_DIR})")

    def cases(self):  # pragma: no cover - never instantiated
        return []

    def load(self, case):  # pragma: no cover
        raise NotImplementedError


def shipped_layouts() -> list[type[LayoutAdapter]]:
    """The example layouts shipped as package data, registered under their names."""
    return [nifti_dataset(p) for p in sorted(LAYOUT_DIR.glob("*.toml"))]


# -- built-in layouts ----------------------------------------------------------------------------------


def _brats_patterns(old: str, new: str) -> tuple[str, ...]:
    return tuple(f"{{case}}/{{case}}{sep}{name}.{ext}" for sep, name in (("_", old), ("-", new)) for ext in ("nii.gz", "nii"))


class BraTS(LayoutAdapter):
    name = "brats"
    description = "BraTS 2020/2021 (BraTS2021_00000_flair.nii.gz) and 2023+ (BraTS-GLI-00000-000-t2f.nii.gz) layouts; tumour = label > 0"
    layout = Layout(
        modalities={
            "t1": _brats_patterns("t1", "t1n"),
            "t1ce": _brats_patterns("t1ce", "t1c"),
            "t2": _brats_patterns("t2", "t2w"),
            "flair": _brats_patterns("flair", "t2f"),
        },
        lesion=_brats_patterns("seg", "seg"),
        brain=(*_brats_patterns("brainmask", "brainmask"), *_brats_patterns("mask", "mask")),
        brain_optional=True,  # the official releases ship no brain mask; their background is 0
        known_labels=(0, 1, 2, 3, 4),  # 2013: 1-4; 2021: 1, 2, 4; 2023: 1-3
    )


class OpenMS(LayoutAdapter):
    name = "open-ms"
    description = "open MS data of Lesjak et al. 2018, MNI layout (patientNN/FLAIR_..._regtoMNI.nii.gz, GOLD_STANDARD_...)"
    layout = Layout(
        modalities={
            "t1": ("{case}/T1_*.nii*",),
            "t1ce": ("{case}/T1POST_*.nii*",),
            "t2": ("{case}/T2_*.nii*",),
            "flair": ("{case}/FLAIR_*.nii*",),
        },
        lesion=("{case}/GOLD_STANDARD_*.nii*",),
        brain=("{case}/brainmask*.nii*",),
        brain_optional=True,  # the published MNI layout has no brain mask; its background is 0
        known_labels=(0, 1),
        case_regex=r"patient\d+",
    )

    def __init__(self, root: Path | None = None, modalities: tuple[str, ...] = (), **options):
        if root is not None and (Path(root) / "cross_sectional" / "MNI").is_dir():
            root = Path(root) / "cross_sectional" / "MNI"  # the collection's top folder works too
        super().__init__(root, modalities, **options)
