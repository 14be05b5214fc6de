"""Capture: the layer that knows the model. Forward hooks stream activations into statistics;
inputs turn whatever the user holds into validated batches on the model's device, after the
checks of validate (model, data, labels, classes) have passed."""

from .collect import Request, collect
from .inputs import (
    Pairs,
    Split,
    as_loader,
    batches,
    default_targets,
    example_batch,
    for_model,
    head_layers,
    model_device,
)
from .validate import (
    check_classes,
    check_model,
    check_nonempty,
    check_runs,
    checked_classes,
    checked_inputs,
    labels_of,
)

__all__ = [
    "Pairs",
    "Split",
    "as_loader",
    "batches",
    "check_classes",
    "check_model",
    "check_nonempty",
    "check_runs",
    "checked_classes",
    "checked_inputs",
    "default_targets",
    "example_batch",
    "for_model",
    "head_layers",
    "labels_of",
    "model_device",
    "Request",
    "collect",
]
