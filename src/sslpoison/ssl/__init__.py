"""Self-supervised methods: one file each, each ``method(views) -> loss``.

Adding a method = one file + one line in :data:`METHODS` + one test file.
"""

from __future__ import annotations

from sslpoison.ssl.base import SSLMethod
from sslpoison.ssl.byol import BYOL
from sslpoison.ssl.moco import MoCo
from sslpoison.ssl.msf import MSF
from sslpoison.ssl.simclr import SimCLR

#: Every SSL method by its config name.
METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "mocov2": MoCo,
    "byol": BYOL,
    "msf": MSF,
}

#: Methods that learn from image–caption pairs instead of views (:mod:`sslpoison.ssl.clip`).
IMAGE_TEXT_METHODS: tuple[str, ...] = ("clip",)

__all__ = ["BYOL", "IMAGE_TEXT_METHODS", "METHODS", "MSF", "MoCo", "SSLMethod", "SimCLR"]
