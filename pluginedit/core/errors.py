"""Exceptions with messages that name the problem."""


class PluginEditError(Exception):
    """Base class of every error raised on bad input or a failed edit."""


class InputError(PluginEditError, ValueError):
    """Bad user input: labels, data, ratios, names."""


class PluginError(PluginEditError):
    """A plugin could not be registered or loaded."""


class EditError(PluginEditError, RuntimeError):
    """An edit could not be applied; the model was restored."""
