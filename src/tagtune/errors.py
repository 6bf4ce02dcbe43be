"""The error a user can act on. The CLI prints it as one line and exits with status 2.

Domain errors (a bad checkpoint, unreadable audio, an unknown tag, a bad config) derive from it so that
library callers can catch them precisely and the CLI can tell them from programming errors. A message speaks
in the library's terms; ``params`` names the arguments it is about, and the CLI adds their flag names.
"""


class UserError(Exception):
    """Bad input or a bad environment: the message says what is wrong and what to do."""

    def __init__(self, message: str = "", *, params: tuple[str, ...] = ()):
        super().__init__(message)
        self.params = tuple(params)  # the API arguments concerned, e.g. ("out_dir",)
