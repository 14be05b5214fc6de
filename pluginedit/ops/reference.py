"""Every plain-PyTorch reference in one namespace (each is defined, with its op, in
ops/<op>.py): the contracts the Triton and csrc kernels are tested against."""

from ._common import _as_nc_l  # noqa: F401
from .channel_moments import channel_moments  # noqa: F401
from .class_maps import class_maps, maps_gram  # noqa: F401
from .class_moments import WITNESS_FEATURES, class_moments  # noqa: F401
from .gram import _patches, gram  # noqa: F401
