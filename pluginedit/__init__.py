"""pluginedit: score the components of a trained PyTorch network and edit the model with them.

The public verbs and the types a plugin author needs; everything else lives in the layers
(core → linalg → ops → stats → capture → evaluate → graph → scorers → editors → io → report → api
→ demo → cli; see ARCHITECTURE.md)."""

from .api import Pairs, edit, forget, load, load_model, prune, save, score, score_many
from .capture import Request
from .core.errors import EditError, InputError, PluginEditError
from .core.plugin import Editor, Inputs, Scorer, option
from .core.record import EditRecord
from .core.scores import Scores
from .stats import Statistic

__all__ = [
    "Pairs",
    "score",
    "score_many",
    "edit",
    "prune",
    "forget",
    "save",
    "load",
    "load_model",
    "Scores",
    "EditRecord",
    "Scorer",
    "Editor",
    "Inputs",
    "option",
    "Request",
    "Statistic",
    "PluginEditError",
    "InputError",
    "EditError",
]
__version__ = "0.1.0"
