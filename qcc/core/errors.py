"""The one exception type qcc raises for problems the user can fix.

The CLI turns a QccError into a single line on stderr and a non-zero exit; anything else
is a bug in qcc and keeps its traceback.
"""


class QccError(Exception):
    """A problem with the user's input (model, data, flags), stated in one line."""


class UnsupportedOpError(QccError):
    """An op type (or an op form) that qcc's registry has no entry for."""
