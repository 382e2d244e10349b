"""Writing a result whole or not at all: a temp file beside it, then `os.replace`.

DVC keeps the stages' uncached results (`persist: true`), so a failed or killed stage leaves the
previous run's files: each is replaced only by a complete new one, and only once the stage has
succeeded.
"""

import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` (creating its folder) with `data` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)
