"""evo-fpn: search feature-pyramid architectures for object detectors on top of Optuna."""

from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec, Cell, SpecError

__all__ = ["ArchSpec", "Cell", "SpecError", "PUBLISHED_NASFPN", "FPN_LIKE"]
__version__ = "0.1.0"
