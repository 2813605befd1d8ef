"""Errors that the platform reports to people as one clear line."""


class ExpoError(Exception):
    """A failure with a message meant for the person running the platform."""


class SettingsError(ExpoError):
    """A setting has a value the platform cannot use."""


class StoreError(ExpoError):
    """The metric store cannot be reached or refused a request."""
