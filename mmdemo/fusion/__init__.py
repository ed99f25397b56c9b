"""Fusion methods. Importing this package fills the registry; one import line per method."""

from .base import FUSIONS, HEADS, Fusion, FusionConfig, FusionOutput, create_fusion, list_fusions, register, register_head

from . import concat  # noqa: E402,F401  (registers "concat")
from . import late  # noqa: E402,F401  ("late", "weighted")
from . import attention  # noqa: E402,F401
from . import cross_attention  # noqa: E402,F401
from . import tensor  # noqa: E402,F401
from . import low_rank  # noqa: E402,F401
from . import autoencoder  # noqa: E402,F401
from . import linear  # noqa: E402,F401  (a unimodal head, not a fusion method)

__all__ = ["FUSIONS", "HEADS", "Fusion", "FusionConfig", "FusionOutput", "create_fusion", "list_fusions", "register", "register_head"]
