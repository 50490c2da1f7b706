"""Old location of :mod:`maas_wire.protocol`, kept so that existing imports work."""

from __future__ import annotations

from maas_wire.protocol import *  # noqa: F403
from maas_wire.protocol import __all__ as __all__
