"""A maas server in a process of its own, for the tests that kill it (``kill -9``).

    python -m tests.server.job_server REPOSITORY DATA_DIR PORT [--hold-after N]

``--hold-after N`` lets the first N model runs through and holds every later one until the
process dies: a job on this server makes progress, then cannot finish, however fast the machine.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from maas_server import Settings, create_app
from maas_server.runtime import OnnxModel


def hold_after(runs_allowed: int) -> None:
    original = OnnxModel.run
    runs = 0

    async def run(
        self: OnnxModel, feeds: dict[str, np.ndarray[Any, Any]], names: list[str], *more: Any
    ) -> dict[str, np.ndarray[Any, Any]]:
        nonlocal runs
        runs += 1
        if runs > runs_allowed:
            await asyncio.Event().wait()  # until the process is killed
        return await original(self, feeds, names, *more)

    OnnxModel.run = run  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("repository", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--hold-after", type=int, default=None)
    args = parser.parse_args()
    if args.hold_after is not None:
        hold_after(args.hold_after)
    settings = Settings(repository=args.repository, data_dir=args.data_dir)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
