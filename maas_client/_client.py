"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (``async``/``await``).

:class:`AsyncClient` is written in ``maas_client/_async``; :class:`Client` is generated from it
into ``maas_client/_sync`` by ``scripts/unasync.py``.
"""

from __future__ import annotations

from ._async import AsyncClient
from ._sync import Client

__all__ = ["AsyncClient", "Client"]
