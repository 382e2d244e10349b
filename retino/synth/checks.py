"""Checks of the arguments a user gives `retino synth`: each failure is a `RetinoError`, one
line that names the option and says what to give instead."""

import operator
import re
from pathlib import Path

from retino.errors import RetinoError

FRAME_MIN, FRAME_MAX = 128, 8192  # frame side in pixels


def whole_number(option: str, value: object, lo: int, hi: int | None = None, unit: str = "") -> int:
    """`value` as an int in lo..hi (no upper bound if `hi` is None)."""
    span = f"from {lo} to {hi}" if hi is not None else f"of {lo} or more"
    problem = RetinoError(f"{option} must be a whole number {span}{unit}, got {value!r}")
    if isinstance(value, bool):
        raise problem
    try:
        number = operator.index(value)
    except TypeError:
        raise problem from None
    if number < lo or (hi is not None and number > hi):
        raise problem
    return number


def parse_frame(text: str) -> tuple[int, int]:
    """Parse WIDTHxHEIGHT, e.g. "3888x2592" -> (3888, 2592), and `check_frame` it."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise RetinoError(f"--frame must be WIDTHxHEIGHT in pixels, e.g. 3888x2592; got {text!r}")
    return check_frame((int(match[1]), int(match[2])))


def check_frame(frame: tuple[int, int]) -> tuple[int, int]:
    """(width, height): each side FRAME_MIN..FRAME_MAX, landscape as fundus cameras write."""
    width, height = frame
    if not all(FRAME_MIN <= side <= FRAME_MAX for side in frame):
        raise RetinoError(
            f"--frame {width}x{height}: each side must be {FRAME_MIN} to {FRAME_MAX} pixels, "
            "e.g. 3888x2592"
        )
    if width < height:
        raise RetinoError(
            f"--frame {width}x{height} is taller than wide: give WIDTHxHEIGHT of a landscape "
            "frame, as fundus cameras write, e.g. 3888x2592"
        )
    return width, height


def check_output(out: Path, preview: Path | None) -> None:
    """The data set goes into a new or empty folder, so that two data sets never mix."""
    if out.is_file():
        raise RetinoError(f"{out} is a file: give a folder for the data set (new or empty)")
    if out.is_dir() and any(out.iterdir()):
        raise RetinoError(
            f"{out} is not empty: synth writes into a new or empty folder only, so that data "
            "sets do not mix; remove the folder or give another one"
        )
    _check_parent("output folder", out)
    if preview is not None:
        if preview.is_dir():
            raise RetinoError(f"--preview {preview} is a folder: give a file name such as p.png")
        _check_parent("--preview", preview)


def _check_parent(option: str, path: Path) -> None:
    """Fail early, before hours of rendering, if `path` cannot be created for a file in its way."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RetinoError(f"{option} {path}: {parent} is a file, not a folder")
            return
