"""maas server: the Open Inference Protocol (KServe V2, as Triton speaks it) over ONNX Runtime.

>>> from maas_server import Settings, create_app
>>> app = create_app(Settings(repository=path))  # doctest: +SKIP

``create_app`` is imported on first use, so that light modules of this package (the keys file
format used by ``maas keys``) load without the server extra (Starlette, ONNX Runtime).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("maas")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

from .settings import Settings, default_repository

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["Settings", "__version__", "create_app", "default_repository"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'maas_server' has no attribute {name!r}")
