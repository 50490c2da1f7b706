"""maas server: the Open Inference Protocol (KServe V2, as Triton speaks it) over ONNX Runtime.

>>> from maas_server import Settings, create_app
>>> app = create_app(Settings(repository=path))  # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("maas")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

from .app import create_app
from .settings import Settings, default_repository

__all__ = ["Settings", "__version__", "create_app", "default_repository"]
