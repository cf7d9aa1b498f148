"""Errors that are the user's to fix.

A :class:`UserError` carries a one-line message that names the file, element or
parameter at fault. The command line prints it without a traceback and exits
with status 2; every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, a malformed document, a wrong parameter.

    Parameters
    ----------
    message : str
        One line that names what is wrong and where.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
