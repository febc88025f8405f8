"""User-facing errors: raised before long work starts, printed without a traceback by bin/."""


class UserError(Exception):
    """Bad input from the user (flag, config field, file); the message says what was expected."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class WorkdirError(UserError):
    pass


class DiskFullError(WorkdirError):
    """No space left on the device for a file or folder (``path``); raised before or instead of a
    half-written file, so bin/ reports it in one line and a re-run can resume."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path
