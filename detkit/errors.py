"""The one exception type for problems the user can fix (bad config, missing file, corrupt input).

Command-line tools catch `UserError`, print its message on one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it."""
