"""The one exception type the CLI turns into a one-line message and a non-zero exit code.

The library words its errors in its own terms: a parameter is named in backticks (`nfe`, `run_dir`), which a
Python caller reads as the keyword argument; the CLI renders the same message with the option's flag
(`as_flags`: `nfe` -> --nfe, `run_dir` -> --run-dir).
"""

import re

_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")


class UserError(ValueError):
    """A problem with the user's input: the message names it and says how to fix it.

    A `ValueError`, so that a library caller catching `ValueError` catches it as well as the `ValueError`s
    that `ctmtool.core` raises for values it cannot use (the core checks no user settings and imports nothing
    from this module; the jobs layer checks them and raises `UserError`)."""

    exit_code = 2


def as_flags(message: str) -> str:
    """A library message as the command line says it: `name` becomes --name (underscores as hyphens)."""
    return _PARAM.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


class Interrupted(UserError):
    """Work stopped by a signal after saving what it had; exits 128 + the signal number (130 SIGINT, 143
    SIGTERM) so that a job scheduler sees the job did not finish."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while a command ran (raised by the command line's signal handler): not an
    Exception, so no `except Exception` in a loop or a server swallows it; exit code 128 + the signal
    number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
