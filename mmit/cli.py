"""What the command-line tools share: a user's mistake (a missing file, a bad value, a run folder
that does not fit) ends the command with one line naming it, not a traceback.

A user error is an error mmit raises on purpose with a message (its own error classes, or a
ValueError raised in mmit's code), a missing or unreadable file, or a config Hydra / OmegaConf
refused. Anything else is a bug and keeps its traceback. ``MMIT_TRACEBACK=1`` shows the traceback
of user errors too.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TRACEBACK_ENV = "MMIT_TRACEBACK"
_PACKAGE = str(Path(__file__).resolve().parent)


def some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` names, and "..." for the rest."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def did_you_mean(word: str, valid) -> str:
    """ " (did you mean 'x'?)" for the name in ``valid`` closest to a misspelt ``word``, else ""."""
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_chosen(option: str, chosen, names, holder: str) -> None:
    """Refuse the first of ``chosen`` (given with ``option``) that ``names`` (what ``holder`` has) lacks,
    with the nearest name and the whole list."""
    names = list(names)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(
            f"{option} {unknown[0]}: {holder} has no such set{did_you_mean(unknown[0], names)}; "
            f"its sets: {', '.join(names)}"
        )


def whole_number(least: int):
    """An argparse type: a whole number, ``least`` or more (argparse names the option it refuses)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value

    return count


def _raised_in_mmit(err: BaseException) -> bool:
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and str(Path(last.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE)


def _defined_in_mmit(cls: type) -> bool:
    """An error class of mmit's own (also when its module runs as ``__main__``, as ``python -m mmit.build``)."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return cls.__module__.startswith("mmit.") or (path is not None and str(Path(path).resolve()).startswith(_PACKAGE))


def user_error_message(err: BaseException) -> str | None:
    """The message to show for a user error, or None when ``err`` is not one (a bug)."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        inner = user_error_message(err.__cause__)
        if inner is None:
            return None
        key = re.search(r"full_key: (\S+)", str(err))
        return f"{key.group(1)}: {inner}" if key and not inner.startswith(key.group(1)) else inner
    if _defined_in_mmit(type(err)):
        return str(err)
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError):
        return str(err)
    if isinstance(err, HydraException | OmegaConfBaseException):
        return str(err).strip()
    if isinstance(err, ValueError) and _raised_in_mmit(err):
        return str(err)
    return None


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Run a command's body; a user error exits with ``prog: message`` on stderr (status 1), a bug is re-raised."""
    try:
        yield
    except Exception as err:
        message = user_error_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            raise
        raise SystemExit(f"{prog}: {message}") from None  # printed to stderr, exit status 1
