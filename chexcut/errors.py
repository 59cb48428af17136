"""The one error type a user can cause.

Anything raised as :class:`ChexcutError` is the user's to fix: the CLI prints its
message as one line on stderr and exits 2. Everything else is a bug (exit 1).
"""


class ChexcutError(Exception):
    """A problem with the user's input, files or environment, stated in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

