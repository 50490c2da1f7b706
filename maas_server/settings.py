"""Server-wide settings, set by ``maas serve`` flags or by the caller of ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ModelControl", "Settings", "default_repository"]

ModelControl = Literal["none", "explicit"]
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


def default_repository() -> Path:
    """The example repository shipped with maas (inside the wheel, or in the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_repository", here.parent / "examples" / "model_repository"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the bundled example model repository is missing from this install")


@dataclass(frozen=True)
class Settings:
    """How the server behaves.

    ``model_control="none"`` loads every model of the repository at start; ``"explicit"`` loads
    only what is asked for through the repository API. ``strict_readiness`` (Triton's default)
    makes ``/v2/health/ready`` answer 503 while any model that should be served is not.
    ``inline_threshold_us``: requests whose estimated run time is below this many microseconds
    run on the event loop instead of a worker thread (0 turns it off). ``max_inflight``: requests
    accepted at once across all models; more get 503 with ``Retry-After`` (0: no limit).
    """

    repository: Path
    model_control: ModelControl = "none"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    strict_readiness: bool = True
    inline_threshold_us: float = 50.0
    max_inflight: int = 1024
