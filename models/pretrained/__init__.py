"""Checkpoints shipped with the package.

``stfm-tiny``: the inductive spatio-temporal backbone (``replay.foundation``) pretrained on
the shared data folder's real sets and the corpus plus synthetic series; it serves any
network whose grid uses ``patch_len`` 12, ``horizon`` 12 and ``context_patches`` 8 (the
defaults). How it was made: ``models/pretrained/README.md``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT = "stfm-tiny"
# sha256 of stfm-tiny/weights.pt: the file the package was released with
DEFAULT_SHA256 = "abeee77d97c5a4a01003db75db8666bc2ca565c55b801e5bad77ee5964ae350c"


def default_checkpoint() -> Path:
    """The directory of the default checkpoint inside the installed package."""
    return Path(__file__).resolve().parent / DEFAULT
