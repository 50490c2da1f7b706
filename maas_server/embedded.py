"""The app that ``Client.local()`` runs in-process, found by the client through an entry point.

The client never imports the server: this package registers :func:`embedded_app` under the
``maas.embedded`` entry-point group (see ``pyproject.toml``), and ``Client.local`` looks it up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .settings import Settings, default_repository

__all__ = ["embedded_app"]


def embedded_app(
    repository: str | os.PathLike[str] | None = None, settings: Settings | None = None
) -> Any:
    """The maas app over ``repository`` (default: the bundled examples), or over ``settings``."""
    from .app import create_app

    if settings is None:
        path = Path(repository) if repository is not None else default_repository()
        if not path.is_dir():
            raise FileNotFoundError(f"no model repository at {path}")
        settings = Settings(repository=path)
    elif repository is not None:
        raise ValueError("give a repository or settings, not both")
    return create_app(settings)
