"""The project's error for a config value that cannot work (below every other module, so
that data/ and scoring/ can raise it without importing the config)."""


class ConfigError(ValueError):
    """A config field has a value that cannot work; the message says which and why."""
