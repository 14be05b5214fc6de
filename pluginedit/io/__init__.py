"""Models in and out, without pickle.

``save`` writes a directory with ``model.safetensors`` and ``manifest.json``: how to rebuild the
dense architecture (a factory and its arguments, or a transformers class and config), the
structural edits as replayable steps (module, torch-pruning function, indices, in the order they
were applied), the edit history and package versions, and the weights' size and SHA-256.
``load`` checks the manifest and the hash before reading a tensor, rebuilds the dense model
with an allow-listed constructor only (``trust``: nothing the folder names runs unless the caller
trusts it), validates and replays the steps and loads the weights strictly: it returns a whole
model or raises an ``InputError`` naming the file and the problem. Nothing on that path
unpickles, follows a symbolic link or opens a file outside the folder; ``digest`` pins a save.
"""

from .manifest import MANIFEST, WEIGHTS, digest, read_manifest
from .models import build, import_factory, load_model, load_weights, set_source, source_of
from .persist import load, save

__all__ = [
    "save",
    "load",
    "digest",
    "load_model",
    "load_weights",
    "build",
    "import_factory",
    "set_source",
    "source_of",
    "read_manifest",
    "MANIFEST",
    "WEIGHTS",
]
