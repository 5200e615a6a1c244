"""The errors a user can fix, as opposed to bugs: each message names the bad field, file or value and
what to do. Commands report them in one line with exit code 2 (growclip_train/exit_codes.py); any other
exception is a bug and keeps its traceback."""
from .config_fields import ConfigError


class InputError(ValueError):
    """Data, files or arguments a user gave cannot be used (a config field: ConfigError)."""


USER_ERRORS = (ConfigError, InputError, FileNotFoundError, FileExistsError)
