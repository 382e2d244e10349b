"""Synthetic fundus photographs for exercising the pipeline without the Kaggle/EyePACS data.

`render_fundus` paints one colour fundus photograph procedurally (numpy + PIL only, no torch):
black surround, circular vignetted field of view, orange-red textured retina, optic disc with
cup on the nasal side, macula with a foveal reflex, a branching artery/vein tree emanating from
the disc with arcades around the macula, and diabetic-retinopathy lesions whose number, size and
kind grow with the grade (microaneurysms, dot/blot/flame haemorrhages, hard exudates, cotton-wool
spots, venous beading, neovascularisation, pre-retinal haemorrhage, laser scars).  Every image
also gets random anatomy and camera variation (exposure, tint, gamma, blur, rotation, field of
view offset and cropping, rim glare, sensor noise, JPEG quality), independent of the grade.

`synthesize` writes a data set in the lab layout (headerless one-column CSVs of image names and
grades per split, plus ``images/<patient>_<left|right>.jpeg``); output is byte-identical for the
same arguments.  `write_preview` draws a contact sheet, one row per grade.
"""

from __future__ import annotations

import math
import operator
import os
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

GRADE_PRIORS = (0.735, 0.07, 0.15, 0.025, 0.02)  # EyePACS-like priors for grades 0..4
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")

__all__ = ["GRADE_NAMES", "GRADE_PRIORS", "render_fundus", "synthesize", "write_preview"]

_MIN_SIZE = 32
_SS = 3  # supersampling factor of the drawn (anti-aliased) layers
_SPLITS = ("train", "test")
_PARALLEL_MIN_IMAGES = 64  # below this, a process pool costs more than it saves
_HEADROOM = 2.0  # scene radiance range mapped onto the 12-bit tone-curve lookup table
_RNG = np.random.Generator


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
class _Frame:
    """Maps anatomical coordinates to pixels.

    Anatomical coordinates (u, v) are in units of the field-of-view radius, centred on the field
    of view: u points temporally (away from the optic disc), v points down.  The left eye is
    drawn with the disc on the image's left; the right eye is its mirror image.  A small camera
    rotation and an offset of the field-of-view centre are applied on top.
    """

    def __init__(self, size: int, cx: float, cy: float, radius: float, angle: float, mirror: int):
        self.size = size
        self.cx, self.cy, self.r = cx, cy, radius
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.m = mirror

    def px(self, u: float, v: float, ss: int = _SS) -> tuple[float, float]:
        x = self.m * u
        xr = self.cos * x - self.sin * v
        yr = self.sin * x + self.cos * v
        return ((self.cx + self.r * xr) * ss, (self.cy + self.r * yr) * ss)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (u, v) of every pixel centre, float32 arrays of shape (size, size)."""
        ys, xs = _pixel_grid(self.size)
        xr = (xs - self.cx) / self.r
        yr = (ys - self.cy) / self.r
        u = self.m * (self.cos * xr + self.sin * yr)
        v = -self.sin * xr + self.cos * yr
        return u, v


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(c, c, indexing="ij")
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


class _Layers:
    """Lazily created supersampled 8-bit drawing layers (one alpha mask per material)."""

    def __init__(self, size: int):
        self.dim = size * _SS
        self.size = size
        self.images: dict[str, Image.Image] = {}
        self.draws: dict[str, ImageDraw.ImageDraw] = {}

    def draw(self, name: str) -> ImageDraw.ImageDraw:
        if name not in self.draws:
            im = Image.new("L", (self.dim, self.dim), 0)
            self.images[name] = im
            self.draws[name] = ImageDraw.Draw(im)
        return self.draws[name]

    def region(self, name: str, blur: float = 0.0) -> _Region | None:
        """The layer's non-empty part, downsampled to the output size (box filter, i.e.
        anti-aliased), optionally blurred, as float32 alpha 0..1 plus its output slices."""
        im = self.images.get(name)
        bbox = im.getbbox() if im is not None else None
        if bbox is None:
            return None
        m = int(3 * blur) + 2
        n = self.size
        x0, y0 = max(0, bbox[0] // _SS - m), max(0, bbox[1] // _SS - m)
        x1, y1 = min(n, -(-bbox[2] // _SS) + m), min(n, -(-bbox[3] // _SS) + m)
        small = im.crop((x0 * _SS, y0 * _SS, x1 * _SS, y1 * _SS)).reduce(_SS)
        if blur > 0.25:
            small = small.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(small, dtype=np.float32) * (1.0 / 255.0), slice(y0, y1), slice(x0, x1)


_Region = tuple[np.ndarray, slice, slice]


def _window(frame: _Frame, u: float, v: float, rad: float) -> tuple[slice, slice]:
    """Output-pixel slices of a square around anatomical point (u, v) with radius `rad`."""
    x, y = frame.px(u, v, ss=1)
    rp = rad * frame.r
    n = frame.size
    x0, x1 = min(n - 1, max(0, int(x - rp))), max(1, min(n, int(x + rp) + 2))
    y0, y1 = min(n - 1, max(0, int(y - rp))), max(1, min(n, int(y + rp) + 2))
    return slice(y0, y1), slice(x0, x1)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


# --------------------------------------------------------------------------------------------
# vessels
# --------------------------------------------------------------------------------------------
class _VesselTree:
    """Grows artery/vein trees as tapered polylines in anatomical coordinates."""

    def __init__(self, rng: _RNG, fovea: tuple[float, float], min_width: float, step: float):
        self.rng = rng
        self.fu, self.fv = fovea
        self.min_width = min_width
        self.step = step
        # (kind, depth, [(u, v, width), ...]); kind is "artery", "vein" or "nv"
        self.paths: list[tuple[str, int, list[tuple[float, float, float]]]] = []
        self.trunk_points: list[tuple[float, float]] = []  # along the big vessels: lesion sites

    def grow(
        self,
        u: float,
        v: float,
        heading: float,
        width: float,
        kind: str,
        length: float,
        depth: int = 0,
        arcade: tuple[float, float] | None = None,
        max_depth: int = 3,
    ) -> None:
        rng = self.rng
        step = self.step
        curv = 0.0
        travelled = 0.0
        gap = (0.07, 0.16) if depth == 0 else (0.08, 0.18)
        next_branch = rng.uniform(*gap)
        side = 1.0 if rng.random() < 0.5 else -1.0
        if depth == 0:
            taper = 1.0 - step * rng.uniform(0.15, 0.3)
        else:  # branches thin out to capillary size over their length instead of ending blunt
            taper = math.exp(math.log(self.min_width / width) * step / length)
        wiggle = (0.028, 0.04, 0.05, 0.06)[min(depth, 3)]
        noise = rng.standard_normal(int(length / step) + 2) * wiggle
        pts = [(u, v, width)]
        i = 0
        while travelled < length and width > self.min_width:
            curv = 0.75 * curv + float(noise[i])
            i += 1
            heading += curv
            du, dv = u - self.fu, v - self.fv
            dist = math.hypot(du, dv) + 1e-6
            if arcade is not None:
                # follow a circle of radius `ra` around the fovea, in direction `sgn`
                # (spiralling slowly outwards and letting go past the fovea, towards the raphe)
                sgn, ra = arcade
                ra_t = ra * (1.0 + 0.35 * travelled)
                tu, tv = -sgn * dv / dist, sgn * du / dist
                k = 1.6 * (ra_t - dist) / ra_t
                want = math.atan2(tv + k * dv / dist, tu + k * du / dist)
                hold = 0.1 if du < 0.0 else 0.1 * max(0.0, 1.0 - 2.5 * du)
                heading += hold * _wrap(want - heading)
            if dist < 0.28:  # foveal avascular zone: turn away from the fovea
                away = math.atan2(dv, du)
                heading += (0.28 - dist) * 3.0 * _wrap(away - heading)
                if dist < 0.08:
                    break
            u += step * math.cos(heading)
            v += step * math.sin(heading)
            travelled += step
            pts.append((u, v, width))
            if depth == 0 and width > 0.012:
                self.trunk_points.append((u, v))
            if u * u + v * v > 1.1:
                break
            width *= taper
            if travelled >= next_branch and depth < max_depth:
                ratio = rng.uniform(0.35, 0.65) if depth == 0 else rng.uniform(0.5, 0.8)
                child_w = width * ratio
                child_h = heading + side * rng.uniform(0.5, 1.2)
                side = -side
                if child_w > self.min_width * 1.3:
                    self.grow(
                        u,
                        v,
                        child_h,
                        child_w,
                        kind,
                        length=rng.uniform(0.4, 1.0) * (1.0 - 0.2 * depth),
                        depth=depth + 1,
                        max_depth=max_depth,
                    )
                width *= 0.97 if depth == 0 else 0.92
                next_branch = travelled + rng.uniform(*gap)
        if len(pts) > 1:
            self.paths.append((kind, depth, pts))

    def bead(self, rng: _RNG) -> None:
        """Venous beading: periodic calibre bulges along the large veins."""
        for idx, (kind, depth, pts) in enumerate(self.paths):
            if kind != "vein" or depth > 1:
                continue
            phase, period = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.09)
            k = 2 * math.pi * self.step / period
            beaded = [
                (u, v, w * (1.0 + 0.55 * max(0.0, math.sin(phase + k * j))))
                if w > 0.01
                else (u, v, w)
                for j, (u, v, w) in enumerate(pts)
            ]
            self.paths[idx] = (kind, depth, beaded)

    def tangle(self, u: float, v: float, radius: float, n: int, width: float) -> None:
        """Neovascularisation: a net of fine, tortuous, looping vessels around (u, v)."""
        rng = self.rng
        step = 0.45 * self.step
        for _ in range(n):
            a = rng.uniform(0, 2 * math.pi)
            r = radius * math.sqrt(rng.random())
            pu, pv = u + r * math.cos(a), v + r * math.sin(a)
            heading = rng.uniform(0, 2 * math.pi)
            turn = rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.7)
            w = width * rng.uniform(0.7, 1.3)
            pts = [(pu, pv, w)]
            for _ in range(int(rng.integers(10, 26))):
                heading += turn + 0.4 * float(rng.standard_normal())
                if rng.random() < 0.2:
                    turn = -turn
                nu = pu + step * math.cos(heading)
                nv = pv + step * math.sin(heading)
                if math.hypot(nu - u, nv - v) > radius * 1.2:  # keep the tuft together
                    heading += math.pi * 0.8
                    continue
                pu, pv = nu, nv
                pts.append((pu, pv, w))
            if len(pts) > 1:
                self.paths.append(("nv", 9, pts))

    def draw(self, frame: _Frame, layers: _Layers, reflex: bool) -> None:
        """Draw every path as runs of constant (supersampled, integer) width, with round caps
        where the width changes; sub-pixel widths become 1-pixel lines of reduced intensity."""
        ss = _SS
        scale = frame.r * ss
        m, cos, sin, cx, cy, r = frame.m, frame.cos, frame.sin, frame.cx, frame.cy, frame.r
        for kind, _depth, pts in self.paths:
            draw = layers.draw(kind)
            flat: list[float] = []  # x0, y0, x1, y1, ... in supersampled pixels
            iws: list[int] = []
            for u, v, w in pts:
                x = m * u
                flat.append((cx + r * (cos * x - sin * v)) * ss)
                flat.append((cy + r * (sin * x + cos * v)) * ss)
                iws.append(max(1, int(w * scale + 0.5)))
            n = len(pts)
            start = 0
            while start < n - 1:
                iw = iws[start]
                end = start + 1
                while end < n - 1 and iws[end] == iw:
                    end += 1
                run = flat[2 * start : 2 * end + 2]
                w = pts[start][2] * scale
                if w < 1.0:
                    draw.line(run, fill=max(1, int(255 * w)), width=1)
                else:
                    draw.line(run, fill=255, width=iw)
                    h = iw * 0.5
                    for px, py in ((run[0], run[1]), (run[-2], run[-1])):
                        draw.ellipse((px - h, py - h, px + h, py + h), fill=255)
                    if reflex and kind == "artery" and w > 2.2 * ss:
                        layers.draw("reflex").line(run, fill=190, width=max(1, int(w * 0.22)))
                start = end


# --------------------------------------------------------------------------------------------
# lesions
# --------------------------------------------------------------------------------------------
def _blob(
    draw: ImageDraw.ImageDraw,
    frame: _Frame,
    u: float,
    v: float,
    ru: float,
    rv: float,
    angle: float,
    fill: int,
    n: int = 14,
    jitter: float = 0.0,
    rng: _RNG | None = None,
) -> None:
    """Filled (optionally irregular) ellipse in anatomical coordinates."""
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        k = 1.0 + (jitter * float(rng.uniform(-1, 1)) if rng is not None and jitter else 0.0)
        eu, ev = ru * k * math.cos(t), rv * k * math.sin(t)
        pts.append(frame.px(u + ca * eu - sa * ev, v + sa * eu + ca * ev))
    draw.polygon(pts, fill=fill)


def _dot(draw: ImageDraw.ImageDraw, frame: _Frame, u: float, v: float, r: float, fill: int):
    x, y = frame.px(u, v)
    rp = max(r * frame.r * _SS, 0.8)
    draw.ellipse((x - rp, y - rp, x + rp, y + rp), fill=fill)


class _Lesions:
    def __init__(self, rng: _RNG, frame: _Frame, layers: _Layers, anatomy: dict):
        self.rng = rng
        self.frame = frame
        self.layers = layers
        self.disc = anatomy["disc"]
        self.disc_r = anatomy["disc_r"]
        self.fovea = anatomy["fovea"]
        self.contrast = rng.uniform(0.6, 1.0)

    # -- sampling of sites -------------------------------------------------------------------
    def _ok(self, u: float, v: float, rmax: float) -> bool:
        if u * u + v * v > rmax * rmax:
            return False
        return math.hypot(u - self.disc[0], v - self.disc[1]) > self.disc_r * 1.15

    def site(self, spread: float = 0.4, rmax: float = 0.9, quadrant: int | None = None):
        """A lesion site: posterior pole (around the fovea) or anywhere / in a quadrant."""
        rng = self.rng
        for _ in range(30):
            if quadrant is not None:
                a = (quadrant + rng.random()) * (math.pi / 2)
                r = rmax * math.sqrt(rng.uniform(0.03, 1.0))
                u, v = r * math.cos(a), r * math.sin(a)
            elif rng.random() < 0.6:
                u = self.fovea[0] + spread * float(rng.standard_normal())
                v = self.fovea[1] + spread * float(rng.standard_normal())
            else:
                a = rng.uniform(0, 2 * math.pi)
                r = rmax * math.sqrt(rng.random())
                u, v = r * math.cos(a), r * math.sin(a)
            if self._ok(u, v, rmax):
                return u, v
        return self.fovea[0] + 0.3, self.fovea[1] + 0.2

    def _fill(self, lo: float, hi: float) -> int:
        return int(255 * min(1.0, self.rng.uniform(lo, hi) * self.contrast))

    # -- lesion kinds --------------------------------------------------------------------------
    def microaneurysms(self, n: int, faint: bool = False) -> None:
        rng, draw = self.rng, self.layers.draw("red")
        for _ in range(n):
            u, v = self.site(spread=0.35)
            if faint:
                r, fill = rng.uniform(0.009, 0.013), int(255 * rng.uniform(0.45, 0.7))
            else:
                r, fill = rng.uniform(0.012, 0.022), self._fill(0.75, 1.15)
            _dot(draw, self.frame, u, v, r, fill)

    def haemorrhages(self, n: int, big: float, quadrant: int | None = None) -> None:
        """Dot, blot (irregular) and flame haemorrhages; `big` scales the blot sizes."""
        rng, draw = self.rng, self.layers.draw("red")
        for _ in range(n):
            u, v = self.site(spread=0.45, quadrant=quadrant)
            kind = rng.random()
            fill = self._fill(0.8, 1.2)
            if kind < 0.35:  # dot haemorrhage
                _dot(draw, self.frame, u, v, rng.uniform(0.014, 0.026), fill)
            elif kind < 0.8:  # blot: a few overlapping irregular lumps
                r0 = rng.uniform(0.018, 0.045) * big
                for _ in range(int(rng.integers(1, 4))):
                    ou, ov = rng.normal(0, r0 * 0.45, 2)
                    _blob(
                        draw,
                        self.frame,
                        u + ou,
                        v + ov,
                        r0 * rng.uniform(0.6, 1.1),
                        r0 * rng.uniform(0.6, 1.1),
                        rng.uniform(0, math.pi),
                        fill,
                        jitter=0.18,
                        rng=rng,
                    )
            else:  # flame: elongated along the nerve fibres, i.e. radially from the disc
                ang = math.atan2(v - self.disc[1], u - self.disc[0])
                length = rng.uniform(0.035, 0.07) * big
                _blob(
                    draw,
                    self.frame,
                    u,
                    v,
                    length,
                    length * rng.uniform(0.25, 0.4),
                    ang,
                    fill,
                    jitter=0.1,
                    rng=rng,
                )

    def exudates(self, n_groups: int) -> None:
        """Hard exudates: small bright yellow spots in clusters or circinate rings."""
        rng, draw = self.rng, self.layers.draw("exudate")
        for _ in range(n_groups):
            cu, cv = self.site(spread=0.3, rmax=0.8)
            ring = rng.random() < 0.45
            rad = rng.uniform(0.05, 0.14)
            for _ in range(int(rng.integers(5, 26))):
                if ring:
                    a = rng.uniform(0, 2 * math.pi)
                    rr = rad * rng.uniform(0.8, 1.15)
                    u, v = cu + rr * math.cos(a), cv + rr * 0.8 * math.sin(a)
                else:
                    u, v = cu + rng.normal(0, rad * 0.5), cv + rng.normal(0, rad * 0.5)
                if not self._ok(u, v, 0.95):
                    continue
                r = rng.uniform(0.007, 0.018)
                if rng.random() < 0.2:  # some confluent plaques
                    _blob(
                        draw,
                        self.frame,
                        u,
                        v,
                        r * 2.2,
                        r * 1.3,
                        rng.uniform(0, 3),
                        255,
                        10,
                        0.25,
                        rng,
                    )
                else:
                    _dot(draw, self.frame, u, v, r, self._fill(0.85, 1.2))

    def cotton_wool(self, n: int, trunk: list[tuple[float, float]]) -> None:
        """Fluffy pale-white patches along the vascular arcades / around the disc."""
        rng, draw = self.rng, self.layers.draw("cws")
        for _ in range(n):
            if trunk and rng.random() < 0.75:
                u, v = trunk[int(rng.integers(len(trunk)))]
                u += rng.normal(0, 0.04)
                v += rng.normal(0, 0.04)
            else:
                u, v = self.site(spread=0.45)
            if not self._ok(u, v, 0.9):
                continue
            r0 = rng.uniform(0.03, 0.06)
            ang = rng.uniform(0, math.pi)
            for _ in range(int(rng.integers(2, 5))):
                ou, ov = rng.normal(0, r0 * 0.4, 2)
                _blob(
                    draw,
                    self.frame,
                    u + ou,
                    v + ov,
                    r0 * rng.uniform(0.6, 1.0),
                    r0 * rng.uniform(0.35, 0.7),
                    ang + rng.normal(0, 0.3),
                    self._fill(0.7, 1.0),
                    jitter=0.2,
                    rng=rng,
                )

    def preretinal(self, trunk: list[tuple[float, float]]) -> None:
        """Boat-shaped pre-retinal haemorrhage: flat (horizontal) top, rounded bottom."""
        rng = self.rng
        if trunk and rng.random() < 0.7:
            u, v = trunk[int(rng.integers(len(trunk)))]
        else:
            u, v = self.site(spread=0.35, rmax=0.75)
        x, y = self.frame.px(u, v)
        rx = rng.uniform(0.07, 0.16) * self.frame.r * _SS
        ry = rx * rng.uniform(0.55, 0.9)
        cut = rng.uniform(5, 25)  # degrees above the horizontal diameter that stay
        self.layers.draw("pre").chord(
            (x - rx, y - ry, x + rx, y + ry), start=-cut, end=180 + cut, fill=255
        )

    def laser_scars(self) -> None:
        """Pan-retinal photocoagulation: rows of pigmented spots with pale atrophic centres,
        in the mid-periphery, sparing the posterior pole."""
        rng = self.rng
        pig, scar = self.layers.draw("pigment"), self.layers.draw("scar")
        r = rng.uniform(0.016, 0.028)
        spacing = r * rng.uniform(2.6, 3.6)
        rad = rng.uniform(0.5, 0.6)
        while rad < 0.97:
            n_ring = int(2 * math.pi * rad / spacing)
            a0 = rng.uniform(0, 2 * math.pi)
            for i in range(n_ring):
                if rng.random() < 0.25:  # gaps, as in real treatment
                    continue
                a = a0 + 2 * math.pi * i / n_ring + rng.normal(0, 0.02)
                rr = rad + rng.normal(0, r * 0.3)
                u, v = rr * math.cos(a), rr * math.sin(a)
                if (
                    not self._ok(u, v, 0.96)
                    or math.hypot(u - self.fovea[0], v - self.fovea[1]) < 0.5
                ):
                    continue
                size = r * rng.uniform(0.75, 1.25)
                _dot(pig, self.frame, u, v, size, int(255 * rng.uniform(0.3, 0.9)))
                if rng.random() < 0.7:
                    _dot(
                        scar,
                        self.frame,
                        u,
                        v,
                        size * rng.uniform(0.45, 0.75),
                        int(255 * rng.uniform(0.4, 0.9)),
                    )
            rad += spacing * rng.uniform(0.85, 1.1)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _lowfreq(rng: _RNG, size: int, cells: int) -> np.ndarray:
    """Smooth random field, unit-ish variance, via bicubic upsampling of a coarse grid."""
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    big = Image.fromarray(coarse, mode="F").resize(
        (size, size), Image.Resampling.BICUBIC, box=(1, 1, cells + 2, cells + 2)
    )
    return np.asarray(big, dtype=np.float32)


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    if field.shape[0] == size:
        return field
    big = Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _blend(img: np.ndarray, reg: _Region | None, colour, opacity: float = 1.0) -> None:
    """Alpha-blend towards `colour` (reflecting, pale materials) where the region's alpha is set."""
    if reg is None:
        return
    alpha, ys, xs = reg
    view = img[ys, xs]
    a = (alpha * opacity)[..., None]
    view *= 1.0 - a
    view += a * np.asarray(colour, dtype=np.float32)


def _darken(img: np.ndarray, reg: _Region | None, factor, opacity: float = 1.0) -> None:
    """Multiply towards `factor` (per channel) where alpha is set: absorbing (red) materials."""
    if reg is None:
        return
    alpha, ys, xs = reg
    k = np.asarray(factor, dtype=np.float32) - 1.0
    k *= opacity
    mult = alpha[..., None] * k
    mult += 1.0
    img[ys, xs] *= mult


def _check_size(size: int) -> int:
    size = _int_arg("size", size)
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} pixels, got {size}")
    return size


def _int_arg(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def render_fundus(
    grade: int, size: int, rng: np.random.Generator, eye: str = "left"
) -> Image.Image:
    """One RGB fundus image of the given grade (0-4), size x size pixels.

    Anatomy, camera and lesions are drawn from three independent streams spawned from `rng`,
    so renders of different grades from generators in the same state differ only in the
    lesions (the healthy anatomy and the camera variation do not depend on the grade).  The
    right eye is laid out as the mirror image of the left eye.
    """
    grade = _int_arg("grade", grade)
    if not 0 <= grade <= 4:
        raise ValueError(f"grade must be in 0..4, got {grade}")
    size = _check_size(size)
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    arng, crng, lrng = rng.spawn(3)
    n = size
    f32 = np.float32

    # ---- camera geometry ----
    radius = n * crng.uniform(0.43, 0.485)
    cx = n / 2 + crng.uniform(-0.025, 0.025) * n
    cy = n / 2 + crng.uniform(-0.025, 0.025) * n
    angle = math.radians(crng.uniform(-12, 12))
    frame = _Frame(n, cx, cy, radius, angle, 1 if eye == "left" else -1)
    ug, vg = frame.grid()

    # ---- anatomy ----
    disc = (-arng.uniform(0.5, 0.64), arng.uniform(-0.08, 0.04))
    disc_r = arng.uniform(0.11, 0.145)
    fovea = (disc[0] + arng.uniform(0.6, 0.74), disc[1] + arng.uniform(0.0, 0.09))
    anatomy = {"disc": disc, "disc_r": disc_r, "fovea": fovea}

    # retina background: pigmentation from light orange to dark brownish red, mottled
    pig = arng.random()
    base = np.array([0.86 - 0.2 * pig, 0.42 - 0.17 * pig, 0.2 - 0.1 * pig], dtype=f32)
    base *= np.asarray(arng.uniform(0.94, 1.06, 3), dtype=f32)
    m = min(n, 96)
    tex = 0.07 * _lowfreq(arng, m, 3) + 0.045 * _lowfreq(arng, m, 7) + 0.03 * _lowfreq(arng, m, 18)
    tex = _upsample(tex, n) + 0.015 * _lowfreq(arng, n, max(24, n // 6))
    hue = _upsample(0.05 * _lowfreq(arng, m, 4), n)
    img = np.empty((n, n, 3), dtype=f32)
    np.multiply(tex, base[0], out=img[..., 0])
    np.multiply(tex + hue, base[1], out=img[..., 1])
    np.multiply(0.6 * tex + 1.5 * hue, base[2], out=img[..., 2])
    img += base

    # macula: darker and browner, with a small foveal reflex
    sig = arng.uniform(0.12, 0.18)
    ys, xs = _window(frame, *fovea, 3.2 * sig)
    dm = (ug[ys, xs] - fovea[0]) ** 2 + (vg[ys, xs] - fovea[1]) ** 2
    mac = np.exp(dm * (-0.5 / (sig * sig)))[..., None]
    depth = arng.uniform(0.22, 0.4)
    img[ys, xs] *= 1.0 - depth * mac * np.array([0.8, 1.0, 1.1], dtype=f32)
    fr = arng.uniform(0.007, 0.012)
    reflex = np.exp(dm * (-0.5 / (fr * fr))) * arng.uniform(0.1, 0.35)
    img[ys, xs] += reflex[..., None] * np.array([0.9, 0.75, 0.55], dtype=f32)

    # optic disc: orange-pink rim, pale yellow-white cup (slightly temporal), soft margin
    ys, xs = _window(frame, *disc, disc_r * 2.6)
    du = ug[ys, xs] - disc[0]
    dv = (vg[ys, xs] - disc[1]) / arng.uniform(1.0, 1.15)
    dd = np.sqrt(du * du + dv * dv)
    halo = np.exp(-((dd / (disc_r * 1.4)) ** 2) * 2.0) * 0.35
    _blend(img, (halo, ys, xs), (0.95, 0.6, 0.35), 0.6)
    disc_a = np.clip((disc_r - dd) / (0.2 * disc_r) + 0.5, 0.0, 1.0)
    rim_col = np.array([1.08, 0.76, 0.46], dtype=f32) * arng.uniform(0.92, 1.1)
    _blend(img, (disc_a, ys, xs), rim_col, arng.uniform(0.8, 0.95))
    cup_r = disc_r * arng.uniform(0.3, 0.55)
    dc = np.sqrt((du - disc_r * arng.uniform(0.0, 0.25)) ** 2 + dv * dv)
    cup_a = np.clip((cup_r - dc) / (0.45 * cup_r) + 0.5, 0.0, 1.0)
    _blend(img, (cup_a, ys, xs), (1.2, 1.05, 0.8), arng.uniform(0.65, 0.9))
    if arng.random() < 0.35:  # temporal pigment crescent at the disc margin
        cres = np.clip(1 - np.abs(dd - disc_r * 1.05) / (0.08 * disc_r), 0, 1) * (du > 0.3 * disc_r)
        _darken(img, (cres.astype(f32), ys, xs), (0.6, 0.55, 0.55), 0.6)

    # vessels: superior/inferior arcades around the macula, nasal vessels, small macular ones
    layers = _Layers(n)
    tree = _VesselTree(arng, fovea, min_width=max(0.0035, 0.35 / radius), step=0.03)
    fd = math.hypot(fovea[0] - disc[0], fovea[1] - disc[1])
    vein_w = arng.uniform(0.024, 0.032)
    art_w = vein_w * arng.uniform(0.62, 0.75)
    for sgn in (1.0, -1.0):  # superior (+1, up) and inferior (-1, down)
        ra = fd * arng.uniform(0.7, 0.85)
        for kind, w, off in (("vein", vein_w, 0.02), ("artery", art_w, -0.02)):
            h0 = -sgn * math.pi / 2 + arng.normal(0, 0.2) - 0.25 * sgn
            u0, v0 = disc[0] + off + arng.normal(0, 0.01), disc[1] - sgn * 0.02
            tree.grow(u0, v0, h0, w, kind, length=arng.uniform(1.3, 1.7), arcade=(sgn, ra))
        for kind, w in (("vein", vein_w * 0.7), ("artery", art_w * 0.7)):  # nasal
            h0 = sgn * (-math.pi * 0.72) + arng.normal(0, 0.2)
            tree.grow(disc[0], disc[1], h0, w, kind, length=arng.uniform(0.5, 0.9))
    for _ in range(int(arng.integers(1, 4))):  # small macular / nasal branches off the disc
        kind = "artery" if arng.random() < 0.5 else "vein"
        h0 = arng.normal(0, 0.35) if arng.random() < 0.6 else math.pi + arng.normal(0, 0.3)
        w = art_w * arng.uniform(0.3, 0.5)
        tree.grow(disc[0], disc[1] + arng.normal(0, 0.03), h0, w, kind, arng.uniform(0.3, 0.6))
    sheen_amount = arng.uniform(0.15, 0.5)
    vein_op, art_op = arng.uniform(0.8, 0.95), arng.uniform(0.75, 0.9)

    # ---- lesions: their own random stream, so the rest of the image is grade-independent ----
    if grade > 0:
        _add_lesions(grade, lrng, frame, layers, tree, anatomy)
    tree.draw(frame, layers, reflex=n >= 128)

    blur_v = 0.25 * n / 256  # (no extra blur up to 256 px: the supersampling suffices)
    vein = layers.region("vein", blur_v)
    art = layers.region("artery", blur_v)
    if vein is not None and art is not None:  # nerve fibre layer sheen along the big vessels
        both = np.zeros((n, n), dtype=f32)
        both[vein[1], vein[2]] = vein[0]
        np.maximum(both[art[1], art[2]], art[0], out=both[art[1], art[2]])
        k = max(1, n // 64)
        small = Image.fromarray(both).resize((n // k, n // k), Image.Resampling.BOX)
        small = Image.fromarray((np.asarray(small) * 255).astype(np.uint8))
        small = small.filter(ImageFilter.GaussianBlur(radius * 0.06 / k))
        sheen = np.asarray(small.resize((n, n), Image.Resampling.BILINEAR), dtype=f32)
        img += (sheen * (sheen_amount / 255.0))[..., None] * np.array([0.35, 0.3, 0.3], dtype=f32)
    _darken(img, vein, (0.55, 0.26, 0.3), vein_op)
    _darken(img, art, (0.78, 0.5, 0.55), art_op)
    _blend(img, layers.region("reflex", blur_v), (0.95, 0.6, 0.42), 0.35)

    lesion_blur = 0.5 * n / 256
    _darken(img, layers.region("nv", blur_v * 0.5), (0.62, 0.24, 0.25), 0.85)
    _darken(img, layers.region("pigment", lesion_blur), (0.3, 0.2, 0.18), 0.85)
    _blend(img, layers.region("scar", lesion_blur * 1.5), (1.0, 0.86, 0.68), 0.75)
    _blend(img, layers.region("exudate", lesion_blur), (1.15, 0.98, 0.55), 0.95)
    _blend(img, layers.region("cws", radius * 0.02), (1.0, 0.88, 0.7), 0.85)
    _darken(img, layers.region("red", lesion_blur), (0.55, 0.14, 0.12), 0.92)
    _darken(img, layers.region("pre", lesion_blur * 1.5), (0.45, 0.08, 0.06), 0.97)

    # ---- camera: illumination and field stop, glare, noise, exposure/tint/gamma, blur ----
    r2 = ug * ug + vg * vg
    r = np.sqrt(r2)
    light = 1.0 - crng.uniform(0.2, 0.45) * r2 * r
    edge = np.clip((1.0 - r) * 10.0, 0.0, 1.0)
    light *= 0.55 + 0.45 * edge * (2.0 - edge)
    ga = crng.uniform(0, 2 * math.pi)
    light *= 1.0 + crng.uniform(0.0, 0.22) * (math.cos(ga) * ug + math.sin(ga) * vg)
    light *= np.clip(radius * (1.0 - r) + 0.5, 0.0, 1.0)  # anti-aliased circular field
    if crng.random() < 0.25:  # field stop cut flat at top and bottom
        dy = np.abs(_pixel_grid(n)[0] - cy)
        light *= np.clip(crng.uniform(0.82, 0.95) * radius - dy + 0.5, 0.0, 1.0)
    if crng.random() < 0.35:  # glare / haze from the rim
        ga = crng.uniform(0, 2 * math.pi)
        gd = (ug - math.cos(ga)) ** 2 + (vg - math.sin(ga)) ** 2
        glare = np.exp(gd * (-1.0 / (2 * crng.uniform(0.2, 0.35) ** 2))) * crng.uniform(0.08, 0.3)
        gcol = (1.0, 0.8, 0.5) if crng.random() < 0.6 else (0.6, 0.7, 0.9)
        img += glare[..., None] * np.asarray(gcol, dtype=f32)
    img += crng.standard_normal((n, n, 3), dtype=f32) * f32(crng.uniform(0.004, 0.016))
    img *= light[..., None]

    # exposure, colour tint and gamma through per-channel lookup tables on 12-bit levels
    gain = math.exp(crng.normal(0.0, 0.22))
    tint = (crng.uniform(0.92, 1.08), crng.uniform(0.85, 1.12), crng.uniform(0.7, 1.3))
    gamma = crng.uniform(0.8, 1.2)
    levels = np.arange(4096, dtype=np.float64) * (_HEADROOM / 4095.0)
    idx = np.clip(img * (4095.0 / _HEADROOM), 0.0, 4095.0).astype(np.uint16)
    out = np.empty((n, n, 3), dtype=np.uint8)
    for c in range(3):
        lut = np.clip(levels * (gain * tint[c]), 0.0, 1.0) ** gamma * 255.0 + 0.5
        out[..., c] = lut.astype(np.uint8)[idx[..., c]]
    pic = Image.fromarray(out, mode="RGB")
    blur = crng.uniform(0.0, 0.7) * n / 256
    if crng.random() < 0.1:
        blur += crng.uniform(0.5, 1.5) * n / 256  # defocused shot
    if blur > 0.2:
        pic = pic.filter(ImageFilter.GaussianBlur(blur))
    return pic


def _add_lesions(
    grade: int,
    rng: _RNG,
    frame: _Frame,
    layers: _Layers,
    tree: _VesselTree,
    anatomy: dict,
) -> None:
    les = _Lesions(rng, frame, layers, anatomy)
    trunk = tree.trunk_points
    if grade == 1:
        if rng.random() < 0.25:  # hard cases: one or two tiny faint dots
            les.microaneurysms(int(rng.integers(1, 3)), faint=True)
        else:
            les.microaneurysms(int(rng.integers(2, 9)))
        return
    if grade == 2:
        les.microaneurysms(int(rng.integers(4, 20)))
        les.haemorrhages(int(rng.integers(2, 10)), big=rng.uniform(0.8, 1.3))
        if rng.random() < 0.7:
            les.exudates(int(rng.integers(1, 4)))
        if rng.random() < 0.25:
            les.cotton_wool(int(rng.integers(1, 3)), trunk)
        return
    # severe and proliferative: haemorrhages in all four quadrants, cotton-wool spots
    les.microaneurysms(int(rng.integers(8, 30)))
    big = rng.uniform(1.0, 1.5)
    lo, hi = (4, 10) if grade == 3 else (2, 9)
    for q in range(4):
        les.haemorrhages(int(rng.integers(lo, hi)), big=big, quadrant=q)
    if rng.random() < 0.7:
        les.exudates(int(rng.integers(1, 5)))
    les.cotton_wool(int(rng.integers(2, 8)), trunk)
    if rng.random() < 0.5:
        tree.bead(rng)
    if grade == 4:
        disc, disc_r = anatomy["disc"], anatomy["disc_r"]
        width = max(0.0055, 0.75 / frame.r)
        tree.rng = rng  # new vessels come from the lesion stream too
        if rng.random() < 0.6 or not trunk:  # NVD: on / around the disc
            n_nv = int(rng.integers(14, 30))
            tree.tangle(disc[0], disc[1], disc_r * rng.uniform(0.9, 1.5), n_nv, width)
        for _ in range(int(rng.integers(0 if rng.random() < 0.6 else 1, 4))):  # NVE, arcades
            if trunk:
                pu, pv = trunk[int(rng.integers(len(trunk)))]
                tree.tangle(pu, pv, rng.uniform(0.06, 0.12), int(rng.integers(8, 18)), width)
        if rng.random() < 0.65:
            les.preretinal(trunk)
        if rng.random() < 0.3:
            les.laser_scars()


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# data set
# --------------------------------------------------------------------------------------------
def _quota(n: int) -> list[int]:
    """Image counts per grade: largest-remainder rounding of the priors, >= 1 each if n >= 5."""
    raw = [p * n for p in GRADE_PRIORS]
    counts = [int(x) for x in raw]
    order = sorted(range(5), key=lambda g: (raw[g] - counts[g], -g), reverse=True)
    for g in order[: n - sum(counts)]:
        counts[g] += 1
    if n >= 5:
        for g in range(5):
            while counts[g] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[g] += 1
    return counts


def _plan(n_train: int, n_test: int, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Image names and grades per split (sorted by patient id, left eye before right)."""
    rng = np.random.default_rng([seed, 7919])
    sizes = {"train": n_train, "test": n_test}
    n_patients = {s: (k + 1) // 2 for s, k in sizes.items()}
    total = sum(n_patients.values())
    ids = rng.choice(np.arange(10, 10 + 3 * total + 20), size=total, replace=False)
    split_ids = {"train": ids[: n_patients["train"]], "test": ids[n_patients["train"] :]}
    plan: dict[str, list[tuple[str, int]]] = {}
    for split, k in sizes.items():
        counts = _quota(k)
        grades = np.repeat(np.arange(5), counts)
        rng.shuffle(grades)
        single = None
        if k % 2:  # one patient contributes only one eye
            j = int(rng.integers(k))
            single = int(grades[j])
            grades = np.delete(grades, j)
        # correlate the two eyes: pair images with similar (noisy) severity
        keys = grades + rng.normal(0.0, 0.9, grades.size)
        paired = grades[np.argsort(keys, kind="stable")].reshape(-1, 2)
        groups: list[tuple[int | None, int | None]] = []
        for a, b in paired:
            groups.append((int(a), int(b)) if rng.random() < 0.5 else (int(b), int(a)))
        if single is not None:
            groups.append((single, None) if rng.random() < 0.5 else (None, single))
        order = rng.permutation(len(groups))
        pids = np.sort(split_ids[split])
        rows: list[tuple[str, int]] = []
        for pid, gi in zip(pids, order, strict=True):
            left, right = groups[gi]
            if left is not None:
                rows.append((f"{pid}_left", left))
            if right is not None:
                rows.append((f"{pid}_right", right))
        plan[split] = rows
    return plan


def _render_job(job: tuple[int, int, int, str, int, int, str]) -> None:
    seed, split_idx, index, name, grade, size, path = job
    rng = np.random.default_rng([seed, split_idx, index])
    eye = "left" if name.endswith("_left") else "right"
    img = render_fundus(grade, size, rng, eye)
    quality = int(rng.integers(75, 96))
    img.save(path, format="JPEG", quality=quality, optimize=False, progressive=False)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def synthesize(
    out: Path,
    n_train: int,
    n_test: int,
    size: int,
    seed: int,
    preview: Path | None = None,
) -> dict[str, list[int]]:
    """Write a dataset in the lab layout under `out`; return grade counts per split.

    Layout: ``train_img.csv``/``test_img.csv`` (headerless, one image name per row, e.g.
    ``17_left``), ``train_label.csv``/``test_label.csv`` (headerless, grade 0-4, same order) and
    ``images/<patient>_<left|right>.jpeg``.  Both eyes of a patient are in the same split; with
    an odd count one patient has a single eye.  Grades follow `GRADE_PRIORS` by quota (every
    grade at least once when a split has >= 5 images).  Identical arguments give byte-identical
    files.  Returns ``{"train": [c0, .., c4], "test": [c0, .., c4]}``.
    """
    n_train = _int_arg("n_train", n_train)
    n_test = _int_arg("n_test", n_test)
    for name, k in (("n_train", n_train), ("n_test", n_test)):
        if k < 1:
            raise ValueError(f"{name} must be >= 1, got {k}")
    size = _check_size(size)
    seed = _int_arg("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(n_train, n_test, seed)

    jobs = [
        (seed, si, i, name, grade, size, str(img_dir / f"{name}.jpeg"))
        for si, split in enumerate(_SPLITS)
        for i, (name, grade) in enumerate(plan[split])
    ]
    workers = min(_available_cpus(), 8, len(jobs) // 16 + 1)
    if workers > 1 and len(jobs) >= _PARALLEL_MIN_IMAGES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_render_job, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _render_job(job)

    counts: dict[str, list[int]] = {}
    for split in _SPLITS:
        rows = plan[split]
        (out / f"{split}_img.csv").write_text("".join(f"{nm}\n" for nm, _ in rows))
        (out / f"{split}_label.csv").write_text("".join(f"{g}\n" for _, g in rows))
        counts[split] = [sum(1 for _, g in rows if g == k) for k in range(5)]
    if preview is not None:
        write_preview(Path(preview), size, seed)
    return counts


# --------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def write_preview(path: Path, size: int, seed: int, per_grade: int = 6) -> None:
    """PNG contact sheet: one row per grade (0..4), `per_grade` images each, row labelled.

    The sheet is ``label + per_grade * (size + gap) + gap`` wide and ``5 * (size + gap) + gap``
    high (``gap = max(2, size // 32)``); images are seeded from (seed, grade, column) and
    alternate left/right eyes.
    """
    size = _check_size(size)
    seed = _int_arg("seed", seed)
    per_grade = _int_arg("per_grade", per_grade)
    if per_grade < 1:
        raise ValueError(f"per_grade must be >= 1, got {per_grade}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    gap = max(2, size // 32)
    label_w = max(120, size)
    font_px = max(12, min(28, size // 8))
    sheet = Image.new(
        "RGB", (label_w + per_grade * (size + gap) + gap, 5 * (size + gap) + gap), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    font, small = _font(font_px), _font(max(10, font_px * 2 // 3))
    for g in range(5):
        y = gap + g * (size + gap)
        draw.text((gap * 2, y + size // 2 - font_px), f"{g}", fill=(240, 240, 240), font=font)
        draw.text((gap * 2, y + size // 2 + 2), GRADE_NAMES[g], fill=(200, 200, 200), font=small)
        for j in range(per_grade):
            rng = np.random.default_rng([seed, 2, g, j])
            img = render_fundus(g, size, rng, "left" if j % 2 == 0 else "right")
            sheet.paste(img, (label_w + gap + j * (size + gap), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
