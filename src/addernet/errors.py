"""Errors a user can fix: their message says what is wrong and what to do, so entry points print it alone.

``src/train.py``, ``src/eval.py`` and the other entry points print a :class:`UserError` as one line and exit
with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""


class UserError(Exception):
    """A mistake in the command, the config or the files; the message names it and the fix."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work (a wrong value, a missing checkpoint, a device that is not there)."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for a one-line error that cites it."""
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__
