"""User-facing errors: one line that names the file (and row) and says what to do; and how an
entry point's process ends."""

import functools
import gc
import sys
from collections.abc import Callable
from typing import NoReturn

MAX_LINES = 50  # problem lines shown before "... and N more"


class RetinoError(Exception):
    """An error caused by the user's input or environment, printed without a traceback."""

    @classmethod
    def of_lines(cls, lines: list[str]) -> "RetinoError":
        """One error carrying a line per problem (all found in one pass), the first MAX_LINES."""
        more = len(lines) - MAX_LINES
        return cls("\n".join(lines[:MAX_LINES] + ([f"... and {more} more"] if more > 0 else [])))


def exit_on_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point: a RetinoError becomes `error: <message>` on stderr and exit status 2;
    Ctrl-C / SIGTERM exits 130 without a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except RetinoError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return 130

    return wrapper


def exit_process(code: int) -> NoReturn:
    """End a command's process with `code`, for a script's `__main__` block only (it would keep a
    long-lived process from ever collecting what exists now). Python's final garbage collections
    would walk every object torch and MLflow created, ~1 s per stage here; frozen, they are
    skipped, and the OS frees the memory. atexit handlers and buffered output run as usual."""
    gc.freeze()
    sys.exit(code)
