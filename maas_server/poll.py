"""``model_control="poll"``: follow the repository folder, as Triton's poll mode does.

Every ``interval_s`` the poller looks at each model folder (every file under it: path, size,
modification time). A model whose files differ from what was loaded is reloaded once they are
the same on two looks in a row, so a file still being copied is not loaded half-way; the
reload keeps the versions whose files did not change, and a reload that fails keeps the
versions serving (:meth:`ModelRepository.load`). A model folder that disappears is unloaded.

>>> poller = RepositoryPoller(repository, interval_s=5.0)  # doctest: +SKIP
>>> task = asyncio.create_task(poller.run())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging

from .repository import ModelRepository, folder_signature

__all__ = ["RepositoryPoller"]

logger = logging.getLogger("maas_server")

Signature = tuple[tuple[str, int, int], ...]


class RepositoryPoller:
    """Loads, reloads and unloads models as their folders change (see the module)."""

    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        self.repository = repository
        self.interval_s = interval_s
        self.polls = 0
        """Looks taken so far (tests wait on it)."""
        self._seen: dict[str, Signature] = {}
        self._applied: dict[str, Signature] = {}

    def _look(self) -> dict[str, Signature]:
        root = self.repository.root
        return {name: folder_signature(root / name) for name in self.repository.model_names()}

    def start(self) -> None:
        """Load every model and remember their files (blocking: call it off the loop)."""
        for name, signature in self._look().items():
            self.repository.load(name)
            self._applied[name] = signature
            self._seen[name] = signature

    def poll_once(self) -> list[str]:
        """One look: load what changed and is stable, unload what went; the models touched."""
        current = self._look()
        touched: list[str] = []
        for name, signature in current.items():
            if signature == self._applied.get(name) or signature != self._seen.get(name):
                continue
            try:
                record = self.repository.load(name, reuse=True)
            except Exception as exc:  # the folder went between the look and the load
                logger.error("poll: model %s not reloaded: %s", name, exc)
                continue
            logger.info("poll: model %s reloaded: %s", name, record.state)
            self._applied[name] = signature
            touched.append(name)
        for name in sorted(set(self._applied) - set(current)):
            self.repository.forget(name)
            del self._applied[name]
            logger.info("poll: model %s removed from the repository, unloaded", name)
            touched.append(name)
        self._seen = current
        self.polls += 1
        return touched

    async def run(self) -> None:
        """Look every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:
                logger.exception("poll: looking at the repository failed")
