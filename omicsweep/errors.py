"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class OmicsweepError(Exception):
    """Base for problems with the user's input: files, options, configs."""

    exit_code = 2


class InputError(OmicsweepError):
    """A data file is missing, unreadable or holds values we cannot use."""


class ConfigError(OmicsweepError):
    """A search-space file, option or config value is malformed."""


class SweepInterrupted(OmicsweepError):
    """The sweep stopped before all its trials ran (Ctrl-C, SIGTERM); the run folder can be resumed."""

    exit_code = 130  # as a shell reports a process ended by SIGINT


class UnknownNameError(OmicsweepError):
    """A model or dataset name is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(known)) or '(none)'}")
