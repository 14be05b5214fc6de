"""pluginedit: score the components of a trained PyTorch network and edit the model with them."""
from .api import edit, forget, prune, score
from .components import Component, components
from .record import EditRecord
from .scores import Scores

__all__ = ["score", "edit", "prune", "forget", "Scores", "EditRecord", "Component", "components"]
__version__ = "0.1.0"
