"""`render_fundus`: one colour fundus photograph, composed from anatomy, vessels, lesions and
the camera."""

import numpy as np
from PIL import Image

from retino.grades import NUM_CLASSES
from retino.synth import anatomy, camera, lesions, vessels
from retino.synth.canvas import Layers, View

MIN_SIZE, MAX_SIZE = 32, 4096  # image side in pixels


def render_fundus(
    grade: int, size: int, rng: np.random.Generator, eye: str = "left"
) -> Image.Image:
    """One RGB fundus image of the given grade (0-4), size x size pixels.

    Anatomy, camera and lesions are drawn from three independent streams spawned from `rng`,
    so renders of different grades from generators in the same state differ only in the
    lesions (the healthy anatomy and the camera variation do not depend on the grade).  The
    right eye is laid out as the mirror image of the left eye.
    """
    if isinstance(grade, bool) or not isinstance(grade, int | np.integer):
        raise ValueError(f"grade must be an integer, got {grade!r}")
    if not 0 <= grade < NUM_CLASSES:
        raise ValueError(f"grade must be in 0..{NUM_CLASSES - 1}, got {grade}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {size}")
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    return paint(int(grade), int(size), rng, eye)[0]


def paint(grade: int, n: int, rng: np.random.Generator, eye: str) -> tuple[Image.Image, View]:
    """`render_fundus` without the argument checks; also returns where the field of view is."""
    arng, crng, lrng = rng.spawn(3)
    view = camera.aim(crng, n, eye)
    grid = view.grid()

    eye_anatomy = anatomy.Anatomy.sample(arng)
    img = anatomy.paint_retina(arng, n)
    anatomy.paint_macula(img, arng, view, grid, eye_anatomy)
    anatomy.paint_disc(img, arng, view, grid, eye_anatomy)
    tree, style = vessels.grow_vasculature(arng, eye_anatomy, view)

    # lesions: their own random stream, so the rest of the image is grade-independent
    layers = Layers(n)
    if grade > 0:
        lesions.add_lesions(grade, lrng, view, layers, tree, eye_anatomy)
    tree.draw(view, layers, reflex=n >= 128)  # after the lesions: they bead and sprout vessels
    vessels.composite_vessels(img, layers, style, view)
    lesions.composite_lesions(img, layers, view)

    camera.illuminate(img, crng, view, grid)
    return camera.develop(img, crng), view
