"""The two kinds of error a user can fix, which the CLI prints as one line and exits 2 on.

ConfigError: the configuration is wrong (unknown key, wrong type, value not allowed, rules between
fields). InputError: an input file, directory or checkpoint is missing or unusable.
"""


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


class InputError(ValueError):
    """A problem with the user's input files or models; the CLI prints it as one line."""
