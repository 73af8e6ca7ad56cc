"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class UserError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""

    exit_code = 2
