"""Fusion methods. Importing this package fills the registry; one import line per method."""

from .base import FUSIONS, Fusion, FusionConfig, FusionOutput, create_fusion, list_fusions, register

from . import concat  # noqa: E402,F401  (registers "concat")
from . import late  # noqa: E402,F401  ("late", "weighted")
from . import attention  # noqa: E402,F401
from . import cross_attention  # noqa: E402,F401
from . import tensor  # noqa: E402,F401
from . import low_rank  # noqa: E402,F401
from . import autoencoder  # noqa: E402,F401

__all__ = ["FUSIONS", "Fusion", "FusionConfig", "FusionOutput", "create_fusion", "list_fusions", "register"]
