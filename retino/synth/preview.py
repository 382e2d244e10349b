"""A contact sheet of synthetic photographs, one labelled row per grade."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retino.grades import GRADE_NAMES
from retino.synth import checks
from retino.synth.render import MAX_SIZE, MIN_SIZE, render_fundus


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
    size = checks.whole_number("--size", size, MIN_SIZE, MAX_SIZE, " pixels")
    seed = checks.whole_number("--seed", seed, 0)
    per_grade = checks.whole_number("per_grade", per_grade, 1)
    gap = max(2, size // 32)
    label_w = max(120, size)
    font_px = max(12, min(28, size // 8))
    rows = len(GRADE_NAMES)
    sheet = Image.new(
        "RGB", (label_w + per_grade * (size + gap) + gap, rows * (size + gap) + gap), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    font, small = _font(font_px), _font(max(10, font_px * 2 // 3))
    for g, name in enumerate(GRADE_NAMES):
        y = gap + g * (size + gap)
        draw.text((gap * 2, y + size // 2 - font_px), f"{g}", fill=(240, 240, 240), font=font)
        draw.text((gap * 2, y + size // 2 + 2), name, fill=(200, 200, 200), font=small)
        for j in range(per_grade):
            rng = np.random.default_rng([seed, 2, g, j])
            img = render_fundus(g, size, rng, "left" if j % 2 == 0 else "right")
            sheet.paste(img, (label_w + gap + j * (size + gap), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
