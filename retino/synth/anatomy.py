"""The healthy eye: where the optic disc and fovea lie, the retina's colour and texture, the
macula and the optic disc with its cup.  All drawn from the anatomy random stream."""

from typing import NamedTuple, Self

import numpy as np
from PIL import Image

from retino.synth.canvas import View, blend, darken

_RNG = np.random.Generator
_F32 = np.float32


class Anatomy(NamedTuple):
    """Landmarks in anatomical coordinates (see `View`): disc centre, disc radius, fovea."""

    disc: tuple[float, float]
    disc_r: float
    fovea: tuple[float, float]

    @classmethod
    def sample(cls, rng: _RNG) -> Self:
        # the disc sits nasally, the fovea about two and a half disc diameters temporal to it
        disc = (-rng.uniform(0.5, 0.64), rng.uniform(-0.08, 0.04))
        disc_r = rng.uniform(0.11, 0.145)
        fovea = (disc[0] + rng.uniform(0.6, 0.74), disc[1] + rng.uniform(0.0, 0.09))
        return cls(disc, disc_r, fovea)


def lowfreq(rng: _RNG, size: int, cells: int) -> np.ndarray:
    """Smooth random field, unit-ish variance, via bicubic upsampling of a coarse grid."""
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=_F32)
    big = Image.fromarray(coarse, mode="F").resize(
        (size, size), Image.Resampling.BICUBIC, box=(1, 1, cells + 2, cells + 2)
    )
    return np.asarray(big, dtype=_F32)


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    if field.shape[0] == size:
        return field
    big = Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=_F32)


def paint_retina(rng: _RNG, n: int) -> np.ndarray:
    """The n x n background: pigmentation from light orange to dark brownish red, mottled."""
    pig = rng.random()
    base = np.array([0.86 - 0.2 * pig, 0.42 - 0.17 * pig, 0.2 - 0.1 * pig], dtype=_F32)
    base *= np.asarray(rng.uniform(0.94, 1.06, 3), dtype=_F32)
    m = min(n, 96)  # the coarse octaves are computed small and upsampled: same look, less work
    tex = 0.07 * lowfreq(rng, m, 3) + 0.045 * lowfreq(rng, m, 7) + 0.03 * lowfreq(rng, m, 18)
    tex = _upsample(tex, n) + 0.015 * lowfreq(rng, n, max(24, n // 6))
    hue = _upsample(0.05 * lowfreq(rng, m, 4), n)
    img = np.empty((n, n, 3), dtype=_F32)
    np.multiply(tex, base[0], out=img[..., 0])
    np.multiply(tex + hue, base[1], out=img[..., 1])
    np.multiply(0.6 * tex + 1.5 * hue, base[2], out=img[..., 2])
    img += base
    return img


def paint_macula(
    img: np.ndarray, rng: _RNG, view: View, grid: tuple[np.ndarray, np.ndarray], anatomy: Anatomy
) -> None:
    """Darker, browner macula around the fovea, with a small foveal reflex."""
    ug, vg = grid
    fu, fv = anatomy.fovea
    sig = rng.uniform(0.12, 0.18)
    ys, xs = view.window(fu, fv, 3.2 * sig)
    dm = (ug[ys, xs] - fu) ** 2 + (vg[ys, xs] - fv) ** 2
    mac = np.exp(dm * (-0.5 / (sig * sig)))[..., None]
    depth = rng.uniform(0.22, 0.4)
    img[ys, xs] *= 1.0 - depth * mac * np.array([0.8, 1.0, 1.1], dtype=_F32)
    fr = rng.uniform(0.007, 0.012)
    reflex = np.exp(dm * (-0.5 / (fr * fr))) * rng.uniform(0.1, 0.35)
    img[ys, xs] += reflex[..., None] * np.array([0.9, 0.75, 0.55], dtype=_F32)


def paint_disc(
    img: np.ndarray, rng: _RNG, view: View, grid: tuple[np.ndarray, np.ndarray], anatomy: Anatomy
) -> None:
    """Optic disc: orange-pink rim, pale yellow-white cup (slightly temporal), soft margin,
    sometimes a pigment crescent on its temporal edge."""
    ug, vg = grid
    disc, disc_r = anatomy.disc, anatomy.disc_r
    ys, xs = view.window(*disc, disc_r * 2.6)
    du = ug[ys, xs] - disc[0]
    dv = (vg[ys, xs] - disc[1]) / rng.uniform(1.0, 1.15)  # discs are a little taller than wide
    dd = np.sqrt(du * du + dv * dv)
    halo = np.exp(-((dd / (disc_r * 1.4)) ** 2) * 2.0) * 0.35
    blend(img, (halo, ys, xs), (0.95, 0.6, 0.35), 0.6)
    disc_a = np.clip((disc_r - dd) / (0.2 * disc_r) + 0.5, 0.0, 1.0)
    rim_col = np.array([1.08, 0.76, 0.46], dtype=_F32) * rng.uniform(0.92, 1.1)
    blend(img, (disc_a, ys, xs), rim_col, rng.uniform(0.8, 0.95))
    cup_r = disc_r * rng.uniform(0.3, 0.55)
    dc = np.sqrt((du - disc_r * rng.uniform(0.0, 0.25)) ** 2 + dv * dv)
    cup_a = np.clip((cup_r - dc) / (0.45 * cup_r) + 0.5, 0.0, 1.0)
    blend(img, (cup_a, ys, xs), (1.2, 1.05, 0.8), rng.uniform(0.65, 0.9))
    if rng.random() < 0.35:
        cres = np.clip(1 - np.abs(dd - disc_r * 1.05) / (0.08 * disc_r), 0, 1) * (du > 0.3 * disc_r)
        darken(img, (cres.astype(_F32), ys, xs), (0.6, 0.55, 0.55), 0.6)
