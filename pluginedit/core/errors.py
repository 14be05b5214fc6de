"""Exceptions with messages that name the problem."""


class PluginEditError(Exception):
    """Base class of every error raised on bad input or a failed edit."""


class InputError(PluginEditError, ValueError):
    """Bad user input: labels, data, ratios, names."""


class PluginError(PluginEditError):
    """A plugin could not be registered or loaded."""


class EditError(PluginEditError, RuntimeError):
    """An edit could not be applied; the model was restored."""


class PluginRunError(EditError):
    """A plugin failed in a way of its own while it ran (it raised an exception that is not a
    pluginedit error, returned no EditRecord, scores that do not fit the model, or left NaN in
    the weights); the message names the plugin. After an editor's failure the model was restored."""
