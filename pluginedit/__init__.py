"""pluginedit: score the components of a trained PyTorch network and edit the model with them."""
from .api import edit, forget, prune, score
from .core.components import Component, components
from .core.record import EditRecord
from .core.scores import Scores

__all__ = ["score", "edit", "prune", "forget", "Scores", "EditRecord", "Component", "components"]
__version__ = "0.1.0"
