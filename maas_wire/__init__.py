"""The wire format maas speaks: Open Inference Protocol (KServe V2) messages, tensors and framing.

The bottom layer of the project: :mod:`maas_wire.types` holds the pydantic models of every message,
:mod:`maas_wire.codec` converts numpy arrays to and from tensors (JSON and Triton's binary tensor
data), :mod:`maas_wire.protocol` frames whole requests and answers, and :mod:`maas_wire.generate`
and :mod:`maas_wire.openai` hold the messages of Triton's generate extension and of the OpenAI
routes. Both halves of maas build on it, and it imports nothing else of the project.
"""

from __future__ import annotations

__all__: list[str] = []
