"""User-facing errors: raised before long work starts, printed without a traceback by bin/."""


class UserError(Exception):
    """Bad input from the user (flag, config field, file); the message says what was expected."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class WorkdirError(UserError):
    pass
