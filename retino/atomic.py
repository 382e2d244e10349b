"""Writing results: checked before the work, then written whole or not at all.

DVC keeps the stages' uncached results (`persist: true`), so a failed or killed stage leaves the
previous run's files: each is replaced only by a complete new one (a temp file beside it, then
`os.replace`), and only once the stage has succeeded. `retino predict` checks where its results
go before it grades anything.
"""

import os
import tempfile
from pathlib import Path

from retino.errors import RetinoError


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` (creating its folder) with `data` in one step; a device or a pipe, such as
    /dev/stdout, is written through instead."""
    path = Path(path)
    if path.exists() and not path.is_file():
        target = path
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data)
    if target != path:
        os.replace(target, path)


def check_writable(path: Path, folder: bool = False) -> None:
    """A RetinoError unless `path` can be written as a file (or, with `folder`, filled as a
    folder): it is writable, or the nearest existing folder above it lets us create it."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise RetinoError(f"{path}: is a folder; give a file path such as {path / 'grades.csv'}")
    if path.exists() and not path.is_dir():
        if folder:
            raise RetinoError(f"{path}: is a file, not a folder; choose another path")
        try:
            with path.open("a"):  # opening to append changes nothing
                pass
        except OSError as err:
            raise RetinoError(
                f"{path}: not writable ({err.strerror}); choose another path"
            ) from None
        return
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RetinoError(f"{path}: {parent} is not a folder; choose another path")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise RetinoError(
            f"{path}: cannot create files in {parent} ({err.strerror}); choose another path"
        ) from None
