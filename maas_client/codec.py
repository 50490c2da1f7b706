"""Old location of :mod:`maas_wire.codec`, kept so that existing imports work."""

from __future__ import annotations

from maas_wire.codec import *  # noqa: F403
from maas_wire.codec import __all__ as __all__
