"""Procedural 3D multi-modal brain MRI phantoms: ``synth-tumor`` and ``synth-ms`` (design §4).

No files: every subject is generated from ``numpy.random.default_rng([seed, dataset_code, index])``,
so a case loads identically every time, on its own, whatever the number of subjects.

The phantoms are a benchmark, not a toy. Subjects vary in brain shape (irregular ellipsoid, size,
aspect, small rotation), atrophy, ventricle size, cortical folding and thickness, tissue intensities
(about ±10 %), bias fields and noise. Normal structures are bright on FLAIR (periventricular caps, bright
cortical patches, a sagittal-sinus strip, slow-flow vessels, pulsation ghosts, incomplete CSF
suppression), perivascular spaces are bright on T2, and a share of the lesions is faint on FLAIR but
visible on T2 or T1. A FLAIR threshold is therefore far from perfect while a multi-modal method does
clearly better; ``tests/test_synthetic.py`` checks this (see docs/calibration.md#data-and-preprocessing).

Geometry: image ``[4, depth, size, size]`` (axial axis first), field of view 155 mm x 240 mm x 240 mm, so
the spacing is ``(155 / depth, 240 / size, 240 / size)`` mm and the affine ``diag(spacing, 1)``. Anatomy
is defined in millimetres from random streams that do not depend on the grid, so a larger ``size`` shows
the same brain on a finer grid (noise and texture differ; a lesion may land elsewhere when a random
position qualifies on one grid and not on the other).
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import numpy as np
from scipy import ndimage
from scipy.special import expit

from lesionbench.volume import MODALITIES, DataError, DatasetAdapter, Volume

__all__ = ["SynthTumor", "SynthMS", "FOV_MM"]

#: Field of view (mm) along D (axial, through-plane), H (anterior-posterior) and W (left-right).
FOV_MM = (155.0, 240.0, 240.0)

_T1, _T1CE, _T2, _FLAIR = range(4)

#: Mean tissue intensities per modality (t1, t1ce, t2, flair), before per-subject variation.
#: T1: WM > deep GM > GM > CSF; T2: CSF > GM > deep GM > WM; FLAIR: GM > deep GM > WM > CSF.
_TISSUE = {
    "wm": np.array([1.00, 1.00, 0.45, 0.50]),
    "gm": np.array([0.70, 0.72, 0.62, 0.60]),
    "deep": np.array([0.80, 0.82, 0.55, 0.56]),
    "csf": np.array([0.25, 0.27, 1.00, 0.12]),
}

# Difficulty knobs. Strength ranges are multiples of the subject's white-matter FLAIR mean (the FLAIR
# contrast of a lesion is 1 + c). Tuned so that, at the defaults, the FLAIR baseline (percentile-normalised
# FLAIR as the anomaly map) is well below perfect and a per-voxel multi-modal model beats it clearly.
_CONF = {
    "cap": (0.4, 1.2),  # periventricular caps / rims
    "patch": (0.3, 0.8),  # bright cortical patches
    "sinus": (0.6, 1.4),  # sagittal-sinus strip
    "vessel": (0.2, 0.8),  # slow-flow vessel hyperintensity
    "flow": (0.1, 0.6),  # incomplete CSF suppression
    "ghost": (0.05, 0.2),  # pulsation ghosts along the phase-encoding axis
}
_MS = {
    "count": (3, 15),
    "radius_mm": (4.5, 11.0),  # middle semi-axis, log-uniform; long axis 1.2-2x, short 0.7-1x
    "faint": 0.2,  # share of lesions faint on FLAIR (still bright on T2)
    "flair_faint": (0.1, 0.4),
    "flair": (0.6, 1.4),
    "t2": (0.5, 1.3),
    "t1_hypo": 0.35,  # share of T1-hypointense lesions ("black holes")
    "enhancing": 0.15,  # share of enhancing (active) lesions
    "where": (0.55, 0.25, 0.2),  # periventricular, deep white matter, juxtacortical
}
_TUMOUR = {
    "oedema_mm": (15.0, 45.0),  # oedema extent, log-uniform
    "faint": 0.12,  # share of subjects whose oedema is faint on FLAIR (still bright on T2)
    "flair_faint": (0.1, 0.35),
    "flair": (0.8, 1.6),
    "t2": (0.45, 1.1),
}


# --------------------------------------------------------------------------------------------- helpers
def _soft(signed_mm: np.ndarray, pv: float) -> np.ndarray:
    """Partial-volume fraction of a region given a signed distance (mm, negative inside)."""
    return expit(-signed_mm / np.float32(pv)).astype(np.float32, copy=False)


def _dir_waves(rng: np.random.Generator, u: tuple, n: int, k: tuple[float, float]) -> np.ndarray:
    """A smooth unit-variance field of a direction ``u`` (three arrays): ``n`` cosines, ``|k|`` in ``k``."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    kk = rng.uniform(k[0], k[1], n)[:, None] * dirs
    phase = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros(np.broadcast_shapes(*(a.shape for a in u)), np.float32)
    for (a, b, c), ph in zip(kk.astype(np.float32), phase):
        out += np.cos(a * u[0] + b * u[1] + c * u[2] + np.float32(ph))
    return out * np.float32(math.sqrt(2.0 / n))


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    """A random rotation matrix from small angles (degrees) about x, y and z."""
    ax, ay, az = np.deg2rad([rng.uniform(-m, m) for m in max_deg])
    return _rot("z", az) @ _rot("y", ay) @ _rot("x", ax)


def _rot(axis: str, rad: float) -> np.ndarray:
    c, s = math.cos(rad), math.sin(rad)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":  # tilt in the coronal (x-z) plane
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # turn in the axial (x-y) plane


def _ellipsoid_sd(q: tuple, centre, semi, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid: ``(rho - 1) / |grad rho|``, exact on the surface."""
    d = [q[i] - np.float32(centre[i]) for i in range(3)]
    if rot is not None:  # coordinates in the ellipsoid's own frame: rot.T @ d
        r = rot.astype(np.float32)
        d = [r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3)]
    a = [np.float32(s) for s in semi]
    u = [d[i] / a[i] for i in range(3)]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    grad = np.sqrt((u[0] / a[0]) ** 2 + (u[1] / a[1]) ** 2 + (u[2] / a[2]) ** 2) / np.maximum(rho, np.float32(1e-6))
    return np.maximum((rho - 1) / np.maximum(grad, np.float32(1e-6)), -min(a))


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma_vox) -> np.ndarray:
    """Gaussian-smoothed white noise of unit variance (texture, heterogeneity)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="reflect")
    return f / np.float32(max(float(f.std()), 1e-6))


def _replace(img: np.ndarray, w: np.ndarray, target) -> None:
    """Blend lesion intensities ``target[m]`` (array or scalar per modality) into ``img`` with weight ``w``."""
    for m in range(img.shape[0]):
        img[m] += w * (np.float32(target[m]) - img[m]) if np.isscalar(target[m]) else w * (target[m] - img[m])


# --------------------------------------------------------------------------------------------- phantom
class _Phantom:
    """One subject's healthy anatomy: tissue fractions, intensity images and the geometry lesions use.

    Coordinates: world ``p`` (mm about the grid centre; x left-right = W, y posterior-anterior = H, z
    inferior-superior = D) and the subject frame ``q = R^T (p - c)`` in which the anatomy is drawn.
    ``rng`` draws everything that is independent of the grid; ``noise_rng`` draws grid-sized noise.
    """

    def __init__(self, rng, noise_rng, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.rng, self.noise_rng = rng, noise_rng
        self.shape, self.spacing = shape, spacing
        self.pv = 0.3 * float(np.mean(spacing))  # partial-volume width of tissue boundaries (mm)
        d, h, w = shape
        self.axes = tuple(  # world coordinate of each index along x (W), y (H), z (D)
            ((np.arange(n) - (n - 1) / 2) * sp).astype(np.float32)
            for n, sp in ((w, spacing[2]), (h, spacing[1]), (d, spacing[0]))
        )
        self.R = _rotation(rng, (6.0, 4.0, 8.0))
        self.c = rng.uniform(-4, 4, 3) * np.array([1.0, 1.0, 0.7])
        x, y, z = (a - np.float32(c) for a, c in zip(self.axes, self.c))
        p = (x[None, None, :], y[None, :, None], z[:, None, None])
        R = self.R.astype(np.float32)
        self.q = tuple(R[0, i] * p[0] + R[1, i] * p[1] + R[2, i] * p[2] for i in range(3))
        self._brain()
        self._cortex()
        self._ventricles()
        self._deep()
        self._intensities()

    # ------------------------------------------------------------------ coordinates
    def waves(self, rng: np.random.Generator, n: int, lam: tuple[float, float]) -> np.ndarray:
        """A smooth random field of unit variance: ``n`` plane waves (in the subject frame), wavelengths
        ``lam`` mm. Separable on the grid, so it is a (complex) matrix product: cheap at any size."""
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = (2 * np.pi / rng.uniform(lam[0], lam[1], n))[:, None] * dirs  # subject frame
        phase = rng.uniform(0, 2 * np.pi, n)
        kw = k @ self.R.T  # k.q = (R k).(p - c)
        phase = phase - kw @ self.c
        x, y, z = self.axes
        ex = np.exp(1j * (kw[:, 0, None] * x[None, :] + phase[:, None])).astype(np.complex64)  # [n, W]
        ey = np.exp(1j * (kw[:, 1, None] * y[None, :])).astype(np.complex64)  # [n, H]
        ez = np.exp(1j * (z[:, None] * kw[None, :, 2])).astype(np.complex64)  # [D, n]
        exy = (ey[:, :, None] * ex[:, None, :]).reshape(n, -1)
        # einsum, not BLAS: small matrix products in multi-threaded BLAS crawl on a loaded machine
        out = np.einsum("dn,nk->dk", ez.real, exy.real) - np.einsum("dn,nk->dk", ez.imag, exy.imag)
        return (out * np.float32(math.sqrt(2.0 / n))).reshape(self.shape)

    def box(self, centre, radius: float) -> tuple[slice, slice, slice]:
        """Index slices (D, H, W) of the grid box around subject-frame point ``centre`` (mm)."""
        world = self.R @ np.asarray(centre, float) + self.c
        out = []
        for ax_i, arr_axis in ((2, 0), (1, 1), (0, 2)):  # z -> D, y -> H, x -> W
            axis = self.axes[ax_i]
            sp = self.spacing[arr_axis]
            i0 = (world[ax_i] - axis[0]) / sp
            lo = int(max(math.floor(i0 - radius / sp), 0))
            hi = int(min(math.ceil(i0 + radius / sp) + 1, len(axis)))
            out.append(slice(lo, max(hi, lo)))
        return tuple(out)

    def qbox(self, sl) -> tuple:
        return tuple(a[sl] for a in self.q)

    def dist2(self, sl, centre) -> np.ndarray:
        """Squared distance (mm^2) to subject-frame point ``centre`` on the box ``sl``."""
        return sum((a[sl] - np.float32(c)) ** 2 for a, c in zip(self.q, centre))

    def sd_ellipsoid(self, centre, semi, rot=None, margin: float = 6.0) -> np.ndarray:
        """Signed distance to an ellipsoid on the full grid, computed in a box; ``margin`` (mm) beyond."""
        out = np.full(self.shape, np.float32(margin), np.float32)
        sl = self.box(centre, max(semi) + margin)
        if all(s.stop > s.start for s in sl):
            out[sl] = np.minimum(_ellipsoid_sd(self.qbox(sl), centre, semi, rot), np.float32(margin))
        return out

    def pick(self, where: np.ndarray) -> np.ndarray:
        """A random subject-frame point (mm) whose voxel lies in ``where & brain``.

        Rejection sampling in millimetres with its own stream, so the point hardly depends on the grid and
        the main stream advances by one draw whatever happens.
        """
        sub = np.random.default_rng(self.rng.integers(2**63))
        where = where & self.brain
        rad = 1.25 * np.array(self.radii)  # covers the egg shape and the outline's bumps
        for _ in range(16):
            qp = sub.uniform(-rad, rad, size=(256, 3))
            inside, idx = self.voxels(qp)
            inside[inside] = where[tuple(i[inside] for i in idx)]
            if inside.any():
                return qp[int(np.argmax(inside))]
        flat = np.flatnonzero(where) if where.any() else np.flatnonzero(self.brain)
        idx = np.unravel_index(flat[sub.integers(flat.size)], self.shape)
        return np.array([float(a[idx]) for a in self.q])

    def voxels(self, qp: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Nearest voxels (D, H, W index arrays) of subject-frame points ``qp`` [N, 3], and which lie on the grid."""
        world = qp @ self.R.T + self.c
        idx, inside = [], np.ones(len(qp), bool)
        for ax_i, arr_axis in ((2, 0), (1, 1), (0, 2)):  # z -> D, y -> H, x -> W
            i = np.rint((world[:, ax_i] - self.axes[ax_i][0]) / self.spacing[arr_axis]).astype(int)
            inside &= (i >= 0) & (i < self.shape[arr_axis])
            idx.append(np.clip(i, 0, self.shape[arr_axis] - 1))
        return inside, tuple(idx)

    # ------------------------------------------------------------------ geometry
    def _brain(self):
        rng, (qx, qy, qz) = self.rng, self.q
        rx, ry, rz = rng.uniform(60, 69), rng.uniform(76, 88), rng.uniform(54, 63)
        rz_inf = rz * rng.uniform(0.8, 0.95)
        self.radii = (rx, ry, rz)
        egg = np.float32(rng.uniform(0.03, 0.09))
        ax = np.float32(rx) * (1 - egg * qy / np.float32(ry))  # narrower frontally
        az = np.where(qz > 0, np.float32(rz), np.float32(rz_inf))
        s = np.sqrt((qx / ax) ** 2 + (qy / np.float32(ry)) ** 2 + (qz / az) ** 2)
        r = np.sqrt(qx**2 + qy**2 + qz**2) + np.float32(1e-3)
        pert = np.float32(rng.uniform(0.035, 0.06)) * _dir_waves(rng, (qx / r, qy / r, qz / r), 8, (1.6, 4.5))
        s = s / (1 + pert)
        self.brain = s < 1
        # radial depth below the (perturbed) surface, mm: exact for a sphere, close enough here
        self.depth = r * (1 / np.maximum(s, np.float32(1e-3)) - 1)

    def _cortex(self):
        rng, pv, (qx, qy, qz) = self.rng, self.pv, self.q
        depth = self.depth
        self.atrophy = atrophy = rng.uniform(0, 1)
        lam = (22.0, 34.0)
        fold = self.waves(rng, 32, lam)  # gyri: the zero set of a band-limited field is a labyrinth
        dist_sulc = np.abs(fold) / np.float32(0.9 * 2 * np.pi / np.mean(lam))  # ~ mm to the sulcal mid-surface
        sulc_depth = np.float32(rng.uniform(11, 17)) + np.float32(3.5) * self.waves(rng, 6, (60.0, 120.0))
        thick = np.float32(rng.uniform(3.2, 4.5)) + np.float32(0.6) * self.waves(rng, 6, (50.0, 100.0))
        c0 = np.float32(1.0 + 2.0 * atrophy)  # subarachnoid CSF layer
        ws = np.float32(0.5 + 1.0 * atrophy)  # sulcal CSF half-width
        # interhemispheric fissure: a midline "sulcus" down to the corpus callosum, full depth far front/back
        z_cc = np.float32(20.0) - np.float32(45.0) * expit((np.abs(qy) - np.float32(48.0)) / np.float32(5.0))
        wf = np.float32(rng.uniform(0.8, 1.8) + atrophy)
        sulcus = np.maximum(dist_sulc - ws, depth - sulc_depth)
        sd_csf = np.minimum(np.minimum(depth - c0, sulcus), np.maximum(np.abs(qx) - wf, z_cc - qz))
        sd_outer = np.minimum(
            np.minimum(depth - (c0 + thick), np.maximum(dist_sulc - (ws + thick), depth - (sulc_depth + thick))),
            np.maximum(np.abs(qx) - (wf + thick), z_cc - thick - qz),
        )
        self.f_csf_cortex = _soft(sd_csf, pv)
        self.f_gm = np.maximum(_soft(sd_outer, pv), self.f_csf_cortex) - self.f_csf_cortex
        self.sd_outer = sd_outer  # > 0 in white matter: distance to the cortex (mm)

    def _ventricles(self):
        rng, pv = self.rng, self.pv
        vs = float(np.exp(rng.normal(0.05 + 0.3 * self.atrophy, 0.22)))  # ventricle size
        self.vent_size = vs = min(max(vs, 0.65), 1.8)
        sd = np.full(self.shape, np.float32(25.0), np.float32)
        self.horns = []
        for side in (-1.0, 1.0):
            a = vs * rng.uniform(0.85, 1.15)  # asymmetry
            tilt = math.radians(side * rng.uniform(15, 35))  # butterfly: wings open superolaterally
            spread, arch = rng.uniform(6, 12), rng.uniform(5, 9)
            # a lateral ventricle: a chain of ellipsoids along an arched curve from the frontal to the
            # occipital horn, the atrium more lateral; a temporal horn curves down and forward
            ts = np.linspace(0, 1, 14)
            curve = [(side * (4 + 4 * a + spread * t**2), 27 - 60 * t, 5 + arch * math.sin(math.pi * t)) for t in ts]
            for t, c in zip(ts, curve):
                sx = a * (5.5 + 2.5 * math.exp(-((t - 0.05) ** 2) / 0.02) + 3.0 * math.exp(-((t - 0.8) ** 2) / 0.02))
                sz = a * (6.5 + 2.0 * math.exp(-((t - 0.1) ** 2) / 0.03))
                rot = _rot("y", tilt * (1 - t)) @ _rot("z", -side * math.radians(30) * t**2)
                sd = np.minimum(sd, self.sd_ellipsoid(c, (sx, 6.5, sz), rot, margin=25.0))
            x1 = curve[-1][0]
            for dx, y, z in ((3, -24, -3), (6, -14, -10), (7, -3, -15)):
                sd = np.minimum(sd, self.sd_ellipsoid((x1 + side * dx, y, z), (1.6 * a, 6.5, 2.2 * a), margin=25.0))
            self.horns += [(curve[0][0], curve[0][1] + 5, curve[0][2]), (curve[-1][0], curve[-1][1] - 5, curve[-1][2])]
        sd = np.minimum(sd, self.sd_ellipsoid((0, -2, -3), (0.9 * vs, 10, 7), margin=25.0))  # third ventricle
        self.sd_vent = sd  # signed distance to the ventricles (mm), capped at 25
        self.f_vent = _soft(sd, pv) * (1 - self.f_csf_cortex)

    def _deep(self):
        rng, pv = self.rng, self.pv
        sd = np.full(self.shape, np.float32(6.0), np.float32)
        for side in (-1.0, 1.0):
            j = rng.uniform(0.9, 1.1)
            sd = np.minimum(sd, self.sd_ellipsoid((side * 10, -11, 1), (8 * j, 13 * j, 9 * j)))  # thalamus
            sd = np.minimum(
                sd, self.sd_ellipsoid((side * 23, 4, -2), (5.5 * j, 15 * j, 10 * j), _rot("z", side * 0.26))
            )  # lentiform nucleus
            sd = np.minimum(sd, self.sd_ellipsoid((side * 14, 17, 4), (4.5 * j, 9 * j, 7 * j)))  # caudate head
        wm_like = 1 - self.f_gm - self.f_csf_cortex
        self.f_vent = np.minimum(self.f_vent, wm_like)
        self.f_deep = _soft(sd, pv) * np.clip(wm_like - self.f_vent, 0, 1)
        self.f_wm = np.clip(wm_like - self.f_vent - self.f_deep, 0, 1)

    # ------------------------------------------------------------------ intensities
    def _intensities(self):
        rng, pv, shape = self.rng, self.pv, self.shape
        qx, qy, qz = self.q
        # per-subject tissue means: a global gain per modality and a contrast to white matter that varies
        # by up to +-30 % (grey matter) / +-15 % (CSF), so the orderings of real MRI always hold
        gain = rng.uniform(0.9, 1.1, 4)
        wm = _TISSUE["wm"] * gain * rng.uniform(0.95, 1.05, 4)
        mu = {"wm": wm}
        for t, spread in (("gm", 0.3), ("deep", 0.3), ("csf", 0.15)):
            mu[t] = wm + (_TISSUE[t] - _TISSUE["wm"]) * gain * rng.uniform(1 - spread, 1 + spread, 4)
        mu["csf"][_FLAIR] = _TISSUE["csf"][_FLAIR] * gain[_FLAIR] * rng.uniform(0.7, 1.5)  # CSF suppression varies
        self.mu = mu
        sigma = [3.0 / sp for sp in self.spacing]  # texture correlation ~3 mm
        wm_tex = 1 + np.float32(0.035) * _smooth_noise(self.noise_rng, shape, sigma)
        gm_tex = 1 + np.float32(0.045) * _smooth_noise(self.noise_rng, shape, sigma)
        f_csf = self.f_vent + self.f_csf_cortex
        img = np.empty((4,) + shape, np.float32)
        for m in range(4):
            img[m] = (
                self.f_wm * np.float32(mu["wm"][m]) * wm_tex
                + (self.f_gm * np.float32(mu["gm"][m]) + self.f_deep * np.float32(mu["deep"][m])) * gm_tex
                + f_csf * np.float32(mu["csf"][m])
            )
        wmF, wmT2, wmCE = (np.float32(mu["wm"][m]) for m in (_FLAIR, _T2, _T1CE))
        parts = {}  # confounder maps, kept for inspection and tests
        # periventricular caps and a thin rim, strongest at the frontal and occipital horn tips
        rim = _soft(self.sd_vent - np.float32(rng.uniform(2.0, 5.0)), pv) * (1 - self.f_vent)
        horn = np.full(shape, np.float32(0.2), np.float32)
        for hc in self.horns:
            sl = self.box(hc, 30.0)
            horn[sl] += np.exp(-self.dist2(sl, hc) / np.float32(2 * 8.0**2))
        parts["cap"] = cap = rim * np.minimum(horn, 1) * (1 - self.f_gm)
        a_cap = np.float32(rng.uniform(*_CONF["cap"]))
        img[_FLAIR] += a_cap * wmF * cap
        img[_T2] += np.float32(0.4) * a_cap * wmT2 * cap
        # bright cortical patches (e.g. insula, mesial temporal cortex)
        patches = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(1, 3))):
            c = self.pick(self.f_gm > 0.5)
            rad = rng.uniform(8, 18)
            sl = self.box(c, 3 * rad)
            g = np.exp(-self.dist2(sl, c) / np.float32(2 * rad**2))
            patches[sl] += np.float32(rng.uniform(*_CONF["patch"])) * g * self.f_gm[sl]
        parts["patch"] = patches
        img[_FLAIR] += wmF * patches
        img[_T2] += np.float32(0.2) * wmT2 * patches
        # sagittal-sinus strip: midline, superficial, top and back of the head (left in by skull stripping)
        parts["sinus"] = sinus = (
            _soft(np.abs(qx) - np.float32(rng.uniform(1.5, 3.0)), pv)
            * _soft(self.depth - np.float32(rng.uniform(3, 6)), pv)
            * expit((qz + np.float32(0.6) * np.maximum(-qy, 0) - np.float32(15)) / np.float32(6))
        )
        # enhancing cortical vessels and choroid plexus in the atria
        vess = np.clip(self.waves(rng, 16, (12.0, 24.0)) - np.float32(2.0), 0, 0.5) * np.float32(2.0)
        parts["vessel"] = vess = vess * (self.f_gm + self.f_csf_cortex)
        choroid = np.zeros(shape, np.float32)
        for hx, hy, hz in self.horns[1::2]:
            choroid = np.maximum(choroid, _soft(self.sd_ellipsoid((hx * 0.85, hy + 15, hz), (2.5, 4.5, 2.5)), pv))
        choroid *= self.f_vent
        img[_T1CE] += wmCE * (np.float32(0.8) * sinus + np.float32(0.9) * vess + np.float32(1.1) * choroid)
        img[_FLAIR] += wmF * np.float32(rng.uniform(*_CONF["sinus"])) * sinus
        img[_FLAIR] += wmF * np.float32(rng.uniform(*_CONF["vessel"])) * vess  # slow-flow hyperintensity
        img[_T2] -= np.float32(0.3) * wmT2 * sinus  # flow void
        # incomplete CSF suppression: patches in the ventricles and the basal cisterns
        flow = np.clip(self.waves(rng, 8, (30.0, 60.0)) - np.float32(1.0), 0, None)
        flow *= np.float32(rng.uniform(*_CONF["flow"]))
        flow += np.float32(rng.uniform(*_CONF["flow"])) * expit(-(qz + np.float32(30)) / np.float32(5))
        parts["flow"] = flow = flow * f_csf
        img[_FLAIR] += wmF * flow
        self.ghost_src = sinus + vess
        # perivascular spaces: tiny CSF-like dots (T2 bright, FLAIR and T1 dark) in basal ganglia and WM
        where = (self.f_deep > 0.5) | ((self.f_wm > 0.9) & (self.sd_vent < 20))
        for _ in range(int(rng.integers(4, 16))):
            c = self.pick(where)
            r = rng.uniform(1.5, 3.0)
            sl = self.box(c, r + 4 * pv)
            dot = np.float32(0.8) * _soft(np.sqrt(self.dist2(sl, c)) - np.float32(r), pv)
            _replace(img[(slice(None),) + sl], dot, mu["csf"])
        self.parts = parts
        self.img = img

    # ------------------------------------------------------------------ acquisition
    def acquire(self, rng: np.random.Generator) -> np.ndarray:
        """Ghosts, bias fields, Rician noise and a per-modality scale; zero outside the brain."""
        img = self.img
        h = self.shape[1]
        # pulsation ghosts of bright vascular signal along the phase-encoding (H) axis
        shift = int(round(h * rng.uniform(0.18, 0.32)))
        ghost = np.roll(self.ghost_src, shift, axis=1) + np.roll(self.ghost_src, -shift, axis=1)
        img[_FLAIR] += np.float32(rng.uniform(*_CONF["ghost"]) * self.mu["wm"][_FLAIR]) * ghost
        img[_T1CE] += np.float32(rng.uniform(0.0, 0.2) * self.mu["wm"][_T1CE]) * ghost
        for m in range(4):
            bias = np.exp(np.float32(rng.uniform(0.04, 0.10)) * self.waves(rng, 4, (160.0, 320.0)))
            sigma = np.float32(rng.uniform(0.02, 0.05) * self.mu["wm"][m])
            scale = np.float32(rng.uniform(300, 1200))
            chan = np.clip(img[m], 0, None) * bias
            n1 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            n2 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            img[m] = np.sqrt((chan + sigma * n1) ** 2 + (sigma * n2) ** 2) * scale
        img[:, ~self.brain] = 0
        return img


# --------------------------------------------------------------------------------------------- lesions
def _tumour(ph: _Phantom, rng: np.random.Generator) -> np.ndarray:
    """One tumour: necrotic core, enhancing rim and surrounding oedema; returns the lesion mask."""
    mu, pv = ph.mu, ph.pv
    lo, hi = _TUMOUR["oedema_mm"]
    r_e = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # oedema extent (mm)
    r_t = r_e * rng.uniform(0.35, 0.65)  # solid tumour
    necrotic = r_t > 8 and rng.uniform() < 0.8
    r_n = r_t * rng.uniform(0.3, 0.6) if necrotic else 0.0
    inside = ph.depth > max(0.5 * r_t, 6.0)
    if rng.uniform() < 0.85:  # mostly hemispheric, in white matter, off the ventricles
        inside &= (np.abs(ph.q[0]) > 8) & (ph.sd_vent > 0.5 * r_t) & (ph.f_wm + ph.f_deep > 0.5)
    c = ph.pick(inside)
    stretch = rng.uniform(0.8, 1.25, 3)
    sl = ph.box(c, 1.6 * 1.25 * r_e + 4)
    full = (slice(None),) + sl
    q = ph.qbox(sl)
    d = [(q[i] - np.float32(c[i])) / np.float32(stretch[i]) for i in range(3)]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-3)
    u = tuple(di / dist for di in d)
    shape_core = 1 + np.float32(rng.uniform(0.08, 0.2)) * _dir_waves(rng, u, 6, (2.0, 5.0))
    shape_oed = 1 + np.float32(rng.uniform(0.15, 0.35)) * _dir_waves(rng, u, 8, (1.5, 4.0))
    f_core = _soft(dist - np.float32(r_t) * shape_core, pv)
    f_nec = _soft(dist - np.float32(r_n) * shape_core, pv) if necrotic else np.zeros_like(f_core)
    # vasogenic oedema spreads in white matter, spares cortex and CSF
    tissue = np.clip(ph.f_wm[sl] + ph.f_deep[sl] + np.float32(0.25) * ph.f_gm[sl], 0, 1)
    f_out = np.maximum(_soft(dist - np.float32(r_e) * shape_oed, pv) * tissue, f_core) * (1 - ph.f_vent[sl])
    f_core = np.minimum(f_core, f_out)
    f_nec = np.minimum(f_nec, f_core)
    f_rim, f_oed = f_core - f_nec, f_out - f_core
    img = ph.img[full]
    wm = [float(mu["wm"][m]) for m in range(4)]
    het = 1 + np.float32(0.06) * _smooth_noise(ph.noise_rng, f_out.shape, 1.0)
    # oedema: the contrast fades outwards; its FLAIR contrast varies a lot (some near iso-intense)
    fade = np.clip((np.float32(r_e) * shape_oed - dist) / np.float32(max(r_e - r_t, 1.0)), 0, 1)
    prof = (np.float32(0.8) + np.float32(0.2) * fade) * het
    faint = rng.uniform() < _TUMOUR["faint"]
    c_fl = rng.uniform(*_TUMOUR["flair_faint"]) if faint else rng.uniform(*_TUMOUR["flair"])
    c_t2, c_t1 = rng.uniform(*_TUMOUR["t2"]), rng.uniform(0.05, 0.25)
    oed = [wm[0] * (1 - c_t1 * prof), wm[1] * (1 - c_t1 * prof), wm[2] * (1 + c_t2 * prof), wm[3] * (1 + c_fl * prof)]
    _replace(img, f_oed, oed)
    enh = rng.uniform(0.5, 1.0)
    rim = [wm[0] * rng.uniform(0.7, 0.9), wm[1] * (1 + enh), wm[2] * rng.uniform(1.3, 1.7)]
    rim.append(wm[3] * (1 + c_fl * rng.uniform(0.7, 1.1)))
    _replace(img, f_rim, [t * het for t in rim])
    csf = [float(v) for v in mu["csf"]]
    nec = [csf[0] * rng.uniform(1.1, 1.8), csf[1] * rng.uniform(1.1, 1.8), csf[2] * rng.uniform(0.8, 1.0)]
    nec.append(wm[3] * (1 + c_fl * rng.uniform(0.2, 1.0)))  # necrotic fluid: variable on FLAIR
    if necrotic:
        _replace(img, f_nec, [t * het for t in nec])
    ph.ghost_src[sl] *= 1 - f_out
    mask = np.zeros(ph.shape, bool)
    mask[sl] = f_out >= 0.5
    ph.parts["tumour_rim"] = np.zeros(ph.shape, bool)
    ph.parts["tumour_rim"][sl] = f_rim >= 0.5
    ph.parts["tumour_core"] = np.zeros(ph.shape, bool)
    ph.parts["tumour_core"][sl] = f_nec >= 0.5
    ph.parts["tumour_rim"] &= ph.brain
    ph.parts["tumour_core"] &= ph.brain
    return mask & ph.brain


def _ms(ph: _Phantom, rng: np.random.Generator) -> np.ndarray:
    """3-15 small ovoid white-matter lesions (periventricular, deep, juxtacortical); returns the mask."""
    mu, pv = ph.mu, ph.pv
    wm = [float(mu["wm"][m]) for m in range(4)]
    mask = np.zeros(ph.shape, bool)
    wm_mask = ph.f_wm > 0.5
    sites = (
        (ph.sd_vent > 0) & (ph.sd_vent < 6) & wm_mask,  # periventricular
        (ph.f_wm > 0.9) & (ph.sd_vent > 7) & (ph.sd_outer > 6),  # deep white matter
        wm_mask & (ph.sd_outer > 0) & (ph.sd_outer < 4),  # juxtacortical
    )
    min_semi = 0.75 * max(ph.spacing)  # at least about a voxel on any grid
    centre_v = np.array([0.0, -2.0, 8.0])
    lo, hi = _MS["radius_mm"]
    for _ in range(int(rng.integers(_MS["count"][0], _MS["count"][1] + 1))):
        kind = rng.choice(3, p=_MS["where"])
        c = ph.pick(sites[kind])
        r = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        semi = tuple(max(s, min_semi) for s in (r * rng.uniform(1.2, 2.0), r, r * rng.uniform(0.7, 1.0)))
        a = c - centre_v if kind == 0 else rng.normal(size=3)  # Dawson fingers point away from the ventricles
        a = a / (np.linalg.norm(a) + 1e-9)
        b = np.cross(a, rng.normal(size=3))
        b /= np.linalg.norm(b) + 1e-9
        rot = np.stack([a, b, np.cross(a, b)], axis=1)
        faint = rng.uniform() < _MS["faint"]
        c_fl = rng.uniform(*_MS["flair_faint"]) if faint else rng.uniform(*_MS["flair"])
        c_t2 = rng.uniform(*_MS["t2"])
        c_t1 = rng.uniform(0.2, 0.5) if rng.uniform() < _MS["t1_hypo"] else rng.uniform(0.0, 0.08)
        c_ce = rng.uniform(0.15, 0.45) if rng.uniform() < _MS["enhancing"] else 0.0
        sl = ph.box(c, max(semi) + 4 * pv)
        if any(s.stop <= s.start for s in sl):
            continue
        sd = _ellipsoid_sd(ph.qbox(sl), c, semi, rot)
        f = _soft(sd, pv) * (1 - ph.f_vent[sl]) * (1 - ph.f_csf_cortex[sl])
        rho = np.clip(1 + sd / np.float32(min(semi)), 0, 1)
        prof = np.float32(0.8) + np.float32(0.2) * (1 - rho**2)  # brightest in the centre
        tgt = [wm[0] * (1 - c_t1 * prof), wm[1] * (1 - (c_t1 - c_ce) * prof)]
        tgt += [wm[2] * (1 + c_t2 * prof), wm[3] * (1 + c_fl * prof)]
        _replace(ph.img[(slice(None),) + sl], f, tgt)
        sub = mask[sl]
        sub |= f >= 0.5
        sub[np.unravel_index(int(np.argmax(f)), f.shape)] = True  # no lesion vanishes on a coarse grid
    return mask & ph.brain


# --------------------------------------------------------------------------------------------- adapters
def _healthy_flags(n: int, fraction: float) -> np.ndarray:
    """Which of subjects 0..n-1 are healthy: exactly ``floor(fraction * n + 0.5)``, evenly spread.

    Subject i is healthy when ``floor(fraction * k + 0.5)`` steps up from k = i to k = i + 1, so a
    subject's flag does not depend on ``n`` (a case is the same whatever the number of subjects).
    """
    counts = np.floor(fraction * np.arange(n + 1) + 0.5 + 1e-9).astype(int)
    return np.diff(counts) > 0


class _SynthBase(DatasetAdapter):
    """Shared by the synthetic adapters: options, case ids, healthy subjects, one generator per case.

    Options (``data.*``): ``subjects`` (40), ``size`` (64, in-plane), ``depth`` (32, axial slices), ``seed``
    (0) and ``healthy_fraction`` (0.3: that share of subjects has no lesion). Other options are ignored.
    """

    code: ClassVar[int]  # the dataset's part of the random seed
    #: Half the subjects test, so that paired tests over test volumes have power (quick: 64 subjects give 24
    #: lesioned and 8 healthy test volumes, 8 validation and 24 training subjects; demo: 12, 4, 4 and 12).
    data_defaults: ClassVar[dict] = {"healthy_fraction": 0.25, "test_fraction": 0.5, "val_fraction": 0.125}

    def __init__(
        self,
        root=None,
        subjects: int = 40,
        size: int = 64,
        depth: int = 32,
        seed: int = 0,
        healthy_fraction: float = 0.3,
        **options,
    ):
        subjects, size, depth, seed = int(subjects), int(size), int(depth), int(seed)
        healthy_fraction = float(healthy_fraction)
        if subjects < 1:
            raise ValueError(f"{self.name}: subjects must be >= 1, got {subjects}")
        if size < 16 or depth < 8:
            raise ValueError(f"{self.name}: size must be >= 16 and depth >= 8, got size={size}, depth={depth}")
        if not 0.0 <= healthy_fraction <= 1.0:
            raise ValueError(f"{self.name}: healthy_fraction must be in [0, 1], got {healthy_fraction}")
        super().__init__(root, subjects=subjects, size=size, depth=depth, seed=seed, healthy_fraction=healthy_fraction)
        self.subjects, self.size, self.depth, self.seed = subjects, size, depth, seed
        self.healthy_fraction = healthy_fraction
        self.spacing = (FOV_MM[0] / depth, FOV_MM[1] / size, FOV_MM[2] / size)
        self._healthy = _healthy_flags(subjects, healthy_fraction)

    def cases(self) -> list[str]:
        return [f"{self.name}-{i:03d}" for i in range(self.subjects)]

    def healthy_cases(self) -> list[str]:
        """The ids of the subjects generated without lesions."""
        return [c for c, h in zip(self.cases(), self._healthy) if h]

    def _index(self, case: str) -> int:
        m = re.fullmatch(re.escape(self.name) + r"-(\d{3,})", str(case))
        if m is None or not int(m.group(1)) < self.subjects or case != f"{self.name}-{int(m.group(1)):03d}":
            last = f"{self.name}-{self.subjects - 1:03d}"
            raise DataError(f"{self.name}: unknown case {case!r} (cases are {self.name}-000 .. {last})")
        return int(m.group(1))

    def load(self, case: str) -> Volume:
        return self._generate(self._index(case))[0]

    def lesion_voxels(self, case: str) -> int:
        """Generates the subject's anatomy and lesions, not its acquisition (the images)."""
        i = self._index(case)
        if self._healthy[i]:
            return 0
        r_anat, r_les, _, r_noise = np.random.default_rng([self.seed, self.code, i]).spawn(4)
        ph = _Phantom(r_anat, r_noise, (self.depth, self.size, self.size), self.spacing)
        return int(np.count_nonzero(self._lesions(ph, r_les)))

    def _generate(self, i: int) -> tuple[Volume, _Phantom]:
        """Subject ``i`` and its phantom (tissue fractions and confounder maps, for tests and inspection)."""
        case = f"{self.name}-{i:03d}"
        r_anat, r_les, r_acq, r_noise = np.random.default_rng([self.seed, self.code, i]).spawn(4)
        shape = (self.depth, self.size, self.size)
        ph = _Phantom(r_anat, r_noise, shape, self.spacing)
        lesion = np.zeros(shape, bool) if self._healthy[i] else self._lesions(ph, r_les)
        image = ph.acquire(r_acq)
        return Volume(
            case_id=case,
            image=image,
            lesion=lesion,
            brain=ph.brain,
            modalities=MODALITIES,
            spacing=self.spacing,
            affine=np.diag([*self.spacing, 1.0]),
        ), ph

    def _lesions(self, ph: _Phantom, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class SynthTumor(_SynthBase):
    """Glioma-like phantoms: one tumour per diseased subject (necrotic core, enhancing rim, oedema)."""

    name = "synth-tumor"
    description = "procedural 3D 4-modality brain phantoms, one tumour each (necrotic core, enhancing rim, oedema)"
    code = 1

    def _lesions(self, ph, rng):
        return _tumour(ph, rng)


class SynthMS(_SynthBase):
    """MS-like phantoms: 3-15 small ovoid white-matter lesions per diseased subject, some faint on FLAIR."""

    name = "synth-ms"
    description = "procedural 3D 4-modality brain phantoms, 3-15 small MS-like white-matter lesions each"
    code = 2

    def _lesions(self, ph, rng):
        return _ms(ph, rng)
