# generated from maas_client/_async/_training.py by scripts/unasync.py; do not edit
"""The model a training published, as a handle ready to infer (``job.model``).

>>> job = await client.jobs.create_training("digits", target="digit", name="digits")
... # doctest: +SKIP
>>> await job.wait()  # doctest: +SKIP
>>> result = await job.model.infer({"image": images})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._result import InferResult
from ..types import ModelMetadata

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._types import CallOptions

__all__ = ["TrainedModel"]


class TrainedModel:
    """One version of a model, bound to a client: ``infer`` and ``metadata`` without naming
    the model or its version again."""

    def __init__(self, client: Any, name: str, version: str) -> None:
        # the client is Any, not AsyncClient: importing the client here would close a loop
        self._client = client
        self.name = name
        self.version = version

    def __repr__(self) -> str:
        return f"<model {self.name} version {self.version}>"

    def infer(self, inputs: Any, **kwargs: Any) -> InferResult:
        """``client.infer(name, inputs, version=version, **kwargs)``."""
        result: InferResult = self._client.infer(self.name, inputs, version=self.version, **kwargs)
        return result

    def metadata(self, **options: Unpack[CallOptions]) -> ModelMetadata:
        """The version's inputs (named after the dataset's columns) and outputs."""
        metadata: ModelMetadata = self._client.models.get(self.name, self.version, **options)
        return metadata
