"""Diabetic-retinopathy lesions, drawn into alpha layers from their own random stream: which
lesions a grade gets (`add_lesions`), how each kind looks, and how the layers are painted."""

import math

import numpy as np
from PIL import ImageDraw

from retino.synth.anatomy import Anatomy
from retino.synth.canvas import SS, Layers, View, blend, darken
from retino.synth.vessels import VesselTree, vessel_blur

_RNG = np.random.Generator


class _Painter:
    """Draws lesions of each kind at plausible sites, avoiding the optic disc."""

    def __init__(self, rng: _RNG, view: View, layers: Layers, anatomy: Anatomy):
        self.rng = rng
        self.view = view
        self.layers = layers
        self.disc, self.disc_r, self.fovea = anatomy
        self.contrast = rng.uniform(0.6, 1.0)

    # -- sites and shapes ----------------------------------------------------------------------
    def _ok(self, u: float, v: float, rmax: float) -> bool:
        if u * u + v * v > rmax * rmax:
            return False
        return math.hypot(u - self.disc[0], v - self.disc[1]) > self.disc_r * 1.15

    def site(
        self, spread: float = 0.4, rmax: float = 0.9, quadrant: int | None = None
    ) -> tuple[float, float]:
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

    def _blob(
        self,
        draw: ImageDraw.ImageDraw,
        u: float,
        v: float,
        ru: float,
        rv: float,
        angle: float,
        fill: int,
        jitter: float,
        n: int = 14,
    ) -> None:
        """Filled irregular ellipse: `n` vertices whose radii vary by up to +-`jitter`."""
        ca, sa = math.cos(angle), math.sin(angle)
        pts = []
        for i in range(n):
            t = 2 * math.pi * i / n
            k = 1.0 + jitter * float(self.rng.uniform(-1, 1))
            eu, ev = ru * k * math.cos(t), rv * k * math.sin(t)
            pts.append(self.view.px(u + ca * eu - sa * ev, v + sa * eu + ca * ev))
        draw.polygon(pts, fill=fill)

    def _dot(self, draw: ImageDraw.ImageDraw, u: float, v: float, r: float, fill: int) -> None:
        x, y = self.view.px(u, v)
        rp = max(r * self.view.r * SS, 0.8)
        draw.ellipse((x - rp, y - rp, x + rp, y + rp), fill=fill)

    # -- lesion kinds --------------------------------------------------------------------------
    def microaneurysms(self, n: int, faint: bool = False) -> None:
        rng, draw = self.rng, self.layers.draw("red")
        for _ in range(n):
            u, v = self.site(spread=0.35)
            if faint:
                r, fill = rng.uniform(0.009, 0.013), int(255 * rng.uniform(0.45, 0.7))
            else:
                r, fill = rng.uniform(0.012, 0.022), self._fill(0.75, 1.15)
            self._dot(draw, u, v, r, fill)

    def haemorrhages(self, n: int, big: float, quadrant: int | None = None) -> None:
        """Dot, blot (irregular) and flame haemorrhages; `big` scales the blot sizes."""
        rng, draw = self.rng, self.layers.draw("red")
        for _ in range(n):
            u, v = self.site(spread=0.45, quadrant=quadrant)
            kind = rng.random()
            fill = self._fill(0.8, 1.2)
            if kind < 0.35:  # dot haemorrhage
                self._dot(draw, u, v, rng.uniform(0.014, 0.026), fill)
            elif kind < 0.8:  # blot: a few overlapping irregular lumps
                r0 = rng.uniform(0.018, 0.045) * big
                for _ in range(int(rng.integers(1, 4))):
                    ou, ov = rng.normal(0, r0 * 0.45, 2)
                    ru, rv = r0 * rng.uniform(0.6, 1.1), r0 * rng.uniform(0.6, 1.1)
                    self._blob(draw, u + ou, v + ov, ru, rv, rng.uniform(0, math.pi), fill, 0.18)
            else:  # flame: elongated along the nerve fibres, i.e. radially from the disc
                ang = math.atan2(v - self.disc[1], u - self.disc[0])
                length = rng.uniform(0.035, 0.07) * big
                self._blob(draw, u, v, length, length * rng.uniform(0.25, 0.4), ang, fill, 0.1)

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
                    self._blob(draw, u, v, r * 2.2, r * 1.3, rng.uniform(0, 3), 255, 0.25, n=10)
                else:
                    self._dot(draw, u, v, r, self._fill(0.85, 1.2))

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
                ru, rv = r0 * rng.uniform(0.6, 1.0), r0 * rng.uniform(0.35, 0.7)
                a = ang + rng.normal(0, 0.3)
                self._blob(draw, u + ou, v + ov, ru, rv, a, self._fill(0.7, 1.0), 0.2)

    def preretinal(self, trunk: list[tuple[float, float]]) -> None:
        """Boat-shaped pre-retinal haemorrhage: flat (horizontal) top, rounded bottom."""
        rng = self.rng
        if trunk and rng.random() < 0.7:
            u, v = trunk[int(rng.integers(len(trunk)))]
        else:
            u, v = self.site(spread=0.35, rmax=0.75)
        x, y = self.view.px(u, v)
        rx = rng.uniform(0.07, 0.16) * self.view.r * SS
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
                macular = math.hypot(u - self.fovea[0], v - self.fovea[1]) < 0.5
                if not self._ok(u, v, 0.96) or macular:
                    continue
                size = r * rng.uniform(0.75, 1.25)
                self._dot(pig, u, v, size, int(255 * rng.uniform(0.3, 0.9)))
                if rng.random() < 0.7:
                    scar_r = size * rng.uniform(0.45, 0.75)
                    self._dot(scar, u, v, scar_r, int(255 * rng.uniform(0.4, 0.9)))
            rad += spacing * rng.uniform(0.85, 1.1)


def add_lesions(
    grade: int, rng: _RNG, view: View, layers: Layers, tree: VesselTree, anatomy: Anatomy
) -> None:
    """Draw the lesions of `grade` (1-4), following the international clinical DR scale:
    mild = microaneurysms only; moderate = more than that; severe = haemorrhages in all four
    quadrants, venous beading; proliferative = new vessels, pre-retinal haemorrhage."""
    les = _Painter(rng, view, layers, anatomy)
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
        _proliferative(les, rng, view, tree, anatomy)


def _proliferative(
    les: _Painter, rng: _RNG, view: View, tree: VesselTree, anatomy: Anatomy
) -> None:
    trunk = tree.trunk_points
    width = max(0.0055, 0.75 / view.r)
    tree.rng = rng  # new vessels come from the lesion stream too
    if rng.random() < 0.6 or not trunk:  # NVD: on / around the disc
        n_nv = int(rng.integers(14, 30))
        tree.tangle(*anatomy.disc, anatomy.disc_r * rng.uniform(0.9, 1.5), n_nv, width)
    for _ in range(int(rng.integers(0 if rng.random() < 0.6 else 1, 4))):  # NVE, on the arcades
        if trunk:
            pu, pv = trunk[int(rng.integers(len(trunk)))]
            tree.tangle(pu, pv, rng.uniform(0.06, 0.12), int(rng.integers(8, 18)), width)
    if rng.random() < 0.65:
        les.preretinal(trunk)
    if rng.random() < 0.3:
        les.laser_scars()


def composite_lesions(img: np.ndarray, layers: Layers, view: View) -> None:
    """Paint the lesion layers onto the retina, deepest first: red lesions sit above exudates,
    pre-retinal blood above everything."""
    n = view.size
    blur = 0.5 * n / 256
    darken(img, layers.region("nv", vessel_blur(n) * 0.5), (0.62, 0.24, 0.25), 0.85)
    darken(img, layers.region("pigment", blur), (0.3, 0.2, 0.18), 0.85)
    blend(img, layers.region("scar", blur * 1.5), (1.0, 0.86, 0.68), 0.75)
    blend(img, layers.region("exudate", blur), (1.15, 0.98, 0.55), 0.95)
    blend(img, layers.region("cws", view.r * 0.02), (1.0, 0.88, 0.7), 0.85)
    darken(img, layers.region("red", blur), (0.55, 0.14, 0.12), 0.92)
    darken(img, layers.region("pre", blur * 1.5), (0.45, 0.08, 0.06), 0.97)
