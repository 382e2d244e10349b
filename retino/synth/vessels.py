"""The retinal vessels: artery and vein trees grown from the optic disc as tapered polylines,
with arcades around the macula, and their compositing (nerve-fibre sheen, absorption, the
arterial light reflex).  `VesselTree` also grows the lesions that are vessels: venous beading
and neovascularisation."""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from retino.synth.anatomy import Anatomy
from retino.synth.canvas import SS, Layers, Region, View, blend, darken

_RNG = np.random.Generator
_F32 = np.float32
_FAZ = 0.28  # foveal avascular zone: vessels turn away inside this distance from the fovea
_FAZ_STOP = 0.08  # ... and end this close to it

Point = tuple[float, float, float]  # u, v, width (all in field-of-view radii)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


class VesselTree:
    """Grows artery/vein trees as tapered polylines in anatomical coordinates."""

    def __init__(self, rng: _RNG, fovea: tuple[float, float], min_width: float, step: float):
        self.rng = rng
        self.fu, self.fv = fovea
        self.min_width = min_width
        self.step = step
        # (kind, depth, points); kind is "artery", "vein" or "nv"
        self.paths: list[tuple[str, int, list[Point]]] = []
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
        """A vessel from (u, v): a random walk of smoothed curvature, steered by the arcade and
        the foveal avascular zone, that tapers and gives off side branches as it goes."""
        rng, step = self.rng, self.step
        gap = (0.07, 0.16) if depth == 0 else (0.08, 0.18)
        next_branch = rng.uniform(*gap)
        side = 1.0 if rng.random() < 0.5 else -1.0
        taper = self._taper(width, length, depth)
        wiggle = (0.028, 0.04, 0.05, 0.06)[min(depth, 3)]
        noise = rng.standard_normal(int(length / step) + 2) * wiggle
        pts = [(u, v, width)]
        curv = travelled = 0.0
        i = 0
        while travelled < length and width > self.min_width:
            curv = 0.75 * curv + float(noise[i])
            i += 1
            heading += curv
            du, dv = u - self.fu, v - self.fv
            dist = math.hypot(du, dv) + 1e-6
            if dist < _FAZ_STOP:
                break
            if arcade is not None:
                heading += _arcade_turn(du, dv, dist, heading, travelled, arcade)
            if dist < _FAZ:
                heading += (_FAZ - dist) * 3.0 * _wrap(math.atan2(dv, du) - heading)
            u += step * math.cos(heading)
            v += step * math.sin(heading)
            travelled += step
            pts.append((u, v, width))
            if depth == 0 and width > 0.012:
                self.trunk_points.append((u, v))
            if u * u + v * v > 1.1:  # left the field of view
                break
            width *= taper
            if travelled >= next_branch and depth < max_depth:
                self._branch(u, v, heading, width, side, kind, depth, max_depth)
                side = -side
                width *= 0.97 if depth == 0 else 0.92
                next_branch = travelled + rng.uniform(*gap)
        if len(pts) > 1:
            self.paths.append((kind, depth, pts))

    def _taper(self, width: float, length: float, depth: int) -> float:
        """Width factor per step."""
        if depth == 0:
            return 1.0 - self.step * self.rng.uniform(0.15, 0.3)
        # branches thin out to capillary size over their length instead of ending blunt
        return math.exp(math.log(self.min_width / width) * self.step / length)

    def _branch(
        self,
        u: float,
        v: float,
        heading: float,
        width: float,
        side: float,
        kind: str,
        depth: int,
        max_depth: int,
    ) -> None:
        rng = self.rng
        ratio = rng.uniform(0.35, 0.65) if depth == 0 else rng.uniform(0.5, 0.8)
        child_w = width * ratio
        child_h = heading + side * rng.uniform(0.5, 1.2)
        if child_w > self.min_width * 1.3:
            length = rng.uniform(0.4, 1.0) * (1.0 - 0.2 * depth)
            self.grow(u, v, child_h, child_w, kind, length, depth + 1, max_depth=max_depth)

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

    def draw(self, view: View, layers: Layers, reflex: bool) -> None:
        """Draw every path into the layer of its kind."""
        scale = view.r * SS
        for kind, _depth, pts in self.paths:
            flat: list[float] = []  # x0, y0, x1, y1, ... in supersampled pixels
            for u, v, _w in pts:
                flat.extend(view.px(u, v))
            widths = [pt[2] * scale for pt in pts]
            _draw_path(layers, kind, flat, widths, reflex and kind == "artery")


def _draw_path(
    layers: Layers, kind: str, flat: list[float], widths: list[float], reflex: bool
) -> None:
    """A polyline as runs of constant (supersampled, integer) width, with round caps where the
    width changes; sub-pixel widths become 1-pixel lines of reduced intensity."""
    draw = layers.draw(kind)
    iws = [max(1, int(w + 0.5)) for w in widths]
    n = len(widths)
    start = 0
    while start < n - 1:
        iw = iws[start]
        end = start + 1
        while end < n - 1 and iws[end] == iw:
            end += 1
        run = flat[2 * start : 2 * end + 2]
        w = widths[start]
        if w < 1.0:
            draw.line(run, fill=max(1, int(255 * w)), width=1)
        else:
            draw.line(run, fill=255, width=iw)
            h = iw * 0.5
            for px, py in ((run[0], run[1]), (run[-2], run[-1])):
                draw.ellipse((px - h, py - h, px + h, py + h), fill=255)
            if reflex and w > 2.2 * SS:  # the central light reflex of the larger arteries
                layers.draw("reflex").line(run, fill=190, width=max(1, int(w * 0.22)))
        start = end


def _arcade_turn(
    du: float, dv: float, dist: float, heading: float, travelled: float, arcade: tuple[float, float]
) -> float:
    """Steering that makes a vessel follow a circle of radius `ra` around the fovea in direction
    `sgn`, spiralling slowly outwards and letting go past the fovea, towards the raphe."""
    sgn, ra = arcade
    ra_t = ra * (1.0 + 0.35 * travelled)
    tu, tv = -sgn * dv / dist, sgn * du / dist
    k = 1.6 * (ra_t - dist) / ra_t
    want = math.atan2(tv + k * dv / dist, tu + k * du / dist)
    hold = 0.1 if du < 0.0 else 0.1 * max(0.0, 1.0 - 2.5 * du)
    return hold * _wrap(want - heading)


class VesselStyle(NamedTuple):
    sheen: float  # brightness of the nerve-fibre layer along the big vessels
    vein_opacity: float
    artery_opacity: float


def grow_vasculature(rng: _RNG, anatomy: Anatomy, view: View) -> tuple[VesselTree, VesselStyle]:
    """Superior and inferior arcades around the macula, nasal vessels and a few small macular
    ones, all leaving the disc; plus how strongly they show."""
    disc, fovea = anatomy.disc, anatomy.fovea
    tree = VesselTree(rng, fovea, min_width=max(0.0035, 0.35 / view.r), step=0.03)
    fd = math.hypot(fovea[0] - disc[0], fovea[1] - disc[1])
    vein_w = rng.uniform(0.024, 0.032)
    art_w = vein_w * rng.uniform(0.62, 0.75)
    for sgn in (1.0, -1.0):  # superior (+1, up) and inferior (-1, down)
        ra = fd * rng.uniform(0.7, 0.85)
        for kind, w, off in (("vein", vein_w, 0.02), ("artery", art_w, -0.02)):
            h0 = -sgn * math.pi / 2 + rng.normal(0, 0.2) - 0.25 * sgn
            u0, v0 = disc[0] + off + rng.normal(0, 0.01), disc[1] - sgn * 0.02
            tree.grow(u0, v0, h0, w, kind, length=rng.uniform(1.3, 1.7), arcade=(sgn, ra))
        for kind, w in (("vein", vein_w * 0.7), ("artery", art_w * 0.7)):  # nasal
            h0 = sgn * (-math.pi * 0.72) + rng.normal(0, 0.2)
            tree.grow(disc[0], disc[1], h0, w, kind, length=rng.uniform(0.5, 0.9))
    for _ in range(int(rng.integers(1, 4))):  # small macular / nasal branches off the disc
        kind = "artery" if rng.random() < 0.5 else "vein"
        h0 = rng.normal(0, 0.35) if rng.random() < 0.6 else math.pi + rng.normal(0, 0.3)
        w = art_w * rng.uniform(0.3, 0.5)
        tree.grow(disc[0], disc[1] + rng.normal(0, 0.03), h0, w, kind, rng.uniform(0.3, 0.6))
    sheen = rng.uniform(0.15, 0.5)
    style = VesselStyle(sheen, rng.uniform(0.8, 0.95), rng.uniform(0.75, 0.9))
    return tree, style


def composite_vessels(img: np.ndarray, layers: Layers, style: VesselStyle, view: View) -> None:
    """Paint the drawn vessel layers onto the retina."""
    n = view.size
    blur = vessel_blur(n)
    vein = layers.region("vein", blur)
    art = layers.region("artery", blur)
    if vein is not None and art is not None:
        _add_sheen(img, vein, art, style.sheen, view)
    darken(img, vein, (0.55, 0.26, 0.3), style.vein_opacity)
    darken(img, art, (0.78, 0.5, 0.55), style.artery_opacity)
    blend(img, layers.region("reflex", blur), (0.95, 0.6, 0.42), 0.35)


def vessel_blur(n: int) -> float:
    """Blur of the vessel layers (none up to 256 px: the supersampling suffices)."""
    return 0.25 * n / 256


def _add_sheen(img: np.ndarray, vein: Region, art: Region, amount: float, view: View) -> None:
    """The bright nerve fibre layer reflex along the big vessels: their mask, blurred wide."""
    n = view.size
    both = np.zeros((n, n), dtype=_F32)
    both[vein[1], vein[2]] = vein[0]
    np.maximum(both[art[1], art[2]], art[0], out=both[art[1], art[2]])
    k = max(1, n // 64)  # blur at reduced size: the result is smooth anyway
    small = Image.fromarray(both).resize((n // k, n // k), Image.Resampling.BOX)
    small = Image.fromarray((np.asarray(small) * 255).astype(np.uint8))
    small = small.filter(ImageFilter.GaussianBlur(view.r * 0.06 / k))
    sheen = np.asarray(small.resize((n, n), Image.Resampling.BILINEAR), dtype=_F32)
    img += (sheen * (amount / 255.0))[..., None] * np.array([0.35, 0.3, 0.3], dtype=_F32)
