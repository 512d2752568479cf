"""User-facing errors.

Contract: any exception deriving from `UserError` is a mistake in the user's input (a flag, a
file, a record). The CLI prints its message as `error: ...` and exits with status 2, without a
traceback. Messages name what is wrong and where (file, line, key).
"""


class UserError(ValueError):
    """Bad input from the user; the message alone must tell them what to fix."""
