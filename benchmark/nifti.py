"""The one place that reads and writes NIfTI (design §4).

Every volume is reoriented with nibabel's orientation tools to one axis order, ``AXES``: D runs
inferior -> superior (the axial axis, which the harness slices), H anterior -> posterior (row 0 at the top of
an axial view), W right -> left (radiological display). :func:`write_like` undoes the reorientation, so a
map written for a case has the shape and affine of that case's source file.

Bad input raises :class:`DataError` naming the file: unreadable, truncated or corrupt files, NaN/Inf,
a shape or affine that disagrees with the case's other files, an empty brain mask, unexpected labels.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from lesionbench.volume import DataError, Volume

AXES = ("S", "P", "L")  # D, H, W of every Volume read from NIfTI
AFFINE_TOLERANCE = 1e-3  # mm (and direction cosines): affines closer than this are the same grid


@dataclass
class CaseFiles:
    """The files of one case: canonical modality -> image, the lesion label map, an optional brain mask."""

    modalities: dict[str, Path]
    lesion: Path | None
    brain: Path | None = None

    def all(self) -> list[Path]:
        return [*self.modalities.values(), *(p for p in (self.lesion, self.brain) if p is not None)]


@dataclass
class Image:
    """One file's voxels in the ``AXES`` order, with the affine of that grid."""

    path: Path
    data: np.ndarray  # float32 [D, H, W]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _to_axes(affine: np.ndarray) -> np.ndarray:
    return ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(AXES))


def _open(path: Path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel, gzip and zlib each raise their own types
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: invalid affine (singular or not finite)")
    return img


def read_image(path: Path) -> Image:
    """Read one NIfTI file as float32 in the ``AXES`` order; refuse truncated files and NaN/Inf."""
    img = _open(path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise DataError(f"{path}: cannot read the image data, truncated or corrupt file ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(data).all():
        raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    transform = _to_axes(img.affine)
    return Image(Path(path), ornt.apply_orientation(data, transform), img.affine @ ornt.inv_ornt_aff(transform, data.shape))


def _grid_of(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a file in the ``AXES`` order, from its header only."""
    img = _open(path)
    transform = _to_axes(img.affine)
    shape = tuple(int(img.shape[int(src)]) for src in np.argsort(transform[:, 0]))
    return shape, img.affine @ ornt.inv_ornt_aff(transform, img.shape[:3])


def _same_grid(case: str, ref: Path, ref_grid, path: Path, grid, tolerance: float) -> None:
    if grid[0] != ref_grid[0]:
        raise DataError(f"case {case}: {path} has shape {grid[0]} but {ref} has {ref_grid[0]} (after reorientation to {''.join(AXES)})")
    if not np.allclose(grid[1], ref_grid[1], atol=tolerance):
        diff = float(np.abs(grid[1] - ref_grid[1]).max())
        raise DataError(f"case {case}: the affine of {path} differs from that of {ref} by up to {diff:.3g} (tolerance {tolerance:g})")


def _check_not_truncated(path: Path) -> None:
    """Cheap truncation check without decompressing: the data must end where the header says it does.

    For .nii.gz the gzip trailer holds the uncompressed size (mod 2**32); a mismatch is confirmed by
    decompressing, since multi-member gzip files (bgzip) legitimately disagree.
    """
    img = _open(path)
    header = img.header
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))  # the header field can read 0
    expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.suffix != ".gz":
        if size < expected:
            raise DataError(f"{path}: truncated file ({size} bytes, the header needs {expected})")
        return
    with path.open("rb") as fh:
        fh.seek(max(0, size - 4))
        trailer = fh.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == expected % 2**32:
        return
    try:
        with gzip.open(path, "rb") as fh:
            n = 0
            while chunk := fh.read(1 << 22):
                n += len(chunk)
    except Exception as exc:
        raise DataError(f"{path}: truncated or corrupt gzip data ({type(exc).__name__}: {exc})") from None
    if n < expected:
        raise DataError(f"{path}: truncated file ({n} bytes uncompressed, the header needs {expected})")


def check_case_headers(case: str, files: CaseFiles, tolerance: float = AFFINE_TOLERANCE) -> None:
    """What can be checked without reading the voxels: files exist and parse, are not truncated, and share
    one grid. (NaN/Inf, empty masks and label values need the data: :func:`load_case`.)"""
    paths = files.all()
    ref = paths[0]
    ref_grid = _grid_of(ref)
    for path in paths:
        _check_not_truncated(path)
        _same_grid(case, ref, ref_grid, path, _grid_of(path), tolerance)


def _labels(case: str, image: Image, known: tuple[int, ...] | None) -> np.ndarray:
    rounded = np.rint(image.data)
    if np.abs(rounded - image.data).max() > 1e-3:
        raise DataError(f"case {case}: {image.path} holds non-integer values; a label map is expected")
    values = np.unique(rounded).astype(int)
    if known is not None:
        unexpected = sorted(set(values.tolist()) - set(known))
        if unexpected:
            raise DataError(f"case {case}: {image.path} holds label values {unexpected}; expected only {sorted(known)}")
    return rounded.astype(np.int32)


#: Above this fraction of non-zero voxels on the volume's outer faces, the background is not zero.
MAX_NONZERO_BORDER = 0.5


def _check_zero_background(case: str, brain: np.ndarray, images: list[Image]) -> None:
    """The brain taken from the non-zero voxels is only the brain on a zero background (skull-stripped data);
    on a non-zero one it would be most of the box, and metrics computed over it mislead."""
    faces = [brain[0], brain[-1], brain[:, 0], brain[:, -1], brain[:, :, 0], brain[:, :, -1]]
    border = sum(int(f.sum()) for f in faces) / sum(f.size for f in faces)
    if border > MAX_NONZERO_BORDER:
        raise DataError(
            f"case {case}: no brain mask, and the background is not 0: {border:.0%} of the volume's outer faces are "
            f"non-zero in {', '.join(str(i.path) for i in images)} (the brain would be {brain.mean():.0%} of the volume); "
            "give a brain-mask file (layout key `brain`) or skull-stripped images with a zero background")


def load_case(case: str, files: CaseFiles, lesion_values: tuple[int, ...] | None = None,
              known_labels: tuple[int, ...] | None = None, tolerance: float = AFFINE_TOLERANCE) -> Volume:
    """Read a case's files into a :class:`Volume`.

    lesion_values: label values that count as lesion (None: every label > 0). known_labels: the values a
    label map may hold (None: any integer). Brain mask: the brain-mask file (> 0.5) if given, else the
    voxels that are non-zero in any modality (skull-stripped data with a zero background).
    """
    if not files.modalities:
        raise DataError(f"case {case}: no modality files")
    images = [read_image(p) for p in files.modalities.values()]
    ref = images[0]
    ref_grid = (ref.data.shape, ref.affine)
    for other in images[1:]:
        _same_grid(case, ref.path, ref_grid, other.path, (other.data.shape, other.affine), tolerance)
    lesion = None
    if files.lesion is not None:
        label_image = read_image(files.lesion)
        _same_grid(case, ref.path, ref_grid, label_image.path, (label_image.data.shape, label_image.affine), tolerance)
        labels = _labels(case, label_image, known_labels)
        lesion = np.isin(labels, lesion_values) if lesion_values is not None else labels > 0
    if files.brain is not None:
        brain_image = read_image(files.brain)
        _same_grid(case, ref.path, ref_grid, brain_image.path, (brain_image.data.shape, brain_image.affine), tolerance)
        brain = brain_image.data > 0.5
        if not brain.any():
            raise DataError(f"case {case}: brain mask {files.brain} is empty")
    else:
        brain = np.zeros(ref.data.shape, bool)
        for image in images:
            brain |= image.data != 0
        if not brain.any():
            raise DataError(f"case {case}: empty brain mask: every voxel is 0 in {', '.join(str(i.path) for i in images)}")
        _check_zero_background(case, brain, images)
    for image in images:  # an empty or failed acquisition would be normalised to noise and score at chance
        inside = image.data[brain]
        if inside.min() == inside.max():
            raise DataError(f"case {case}: {image.path} is constant ({float(inside[0]):g}) inside the brain: an empty "
                            "or failed image; replace it, or leave the modality out (data.modalities)")
    stacked = np.empty((len(images), *ref.data.shape), np.float32)
    for i, image in enumerate(images):
        stacked[i] = image.data
    return Volume(case, stacked, lesion, brain, tuple(files.modalities), ref.spacing, ref.affine)


def lesion_voxel_count(case: str, path: Path, lesion_values: tuple[int, ...] | None = None,
                       known_labels: tuple[int, ...] | None = None) -> int:
    """The number of lesion voxels of a case's label file, read alone (no image is opened): the case summary
    that stratified splits use."""
    labels = _labels(case, read_image(path), known_labels)
    lesion = np.isin(labels, lesion_values) if lesion_values is not None else labels > 0
    return int(np.count_nonzero(lesion))


def write_like(data: np.ndarray, reference: Path, out: Path) -> Path:
    """Write ``data`` [D, H, W] (in the ``AXES`` order of ``reference``'s grid) as NIfTI in the reference's
    source space: its array layout, shape and affine, so viewers overlay it on the source image."""
    img = _open(reference)
    back = ornt.ornt_transform(ornt.axcodes2ornt(AXES), ornt.io_orientation(img.affine))
    array = ornt.apply_orientation(np.asarray(data, np.float32), back)
    if array.shape != img.shape[:3]:
        raise DataError(f"map of shape {data.shape} does not fit the grid of {reference} ({img.shape[:3]})")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(type(img)(array, img.affine, header), str(out))
    return out


def write_array(data: np.ndarray, out: Path, affine: np.ndarray | None = None) -> Path:
    """Write a [D, H, W] array that has no source file (synthetic data) as NIfTI."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), str(out))
    return out
