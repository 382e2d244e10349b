"""User-facing errors: one line that names the file (and row) and says what to do."""

import functools
import sys
from collections.abc import Callable


class RetinoError(Exception):
    """An error caused by the user's input or environment, printed without a traceback."""


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
