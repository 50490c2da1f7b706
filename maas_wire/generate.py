"""Wire models of Triton's generate extension: ``POST /v2/models/{m}/generate`` and
``.../generate_stream``.

A request carries ``text_input`` and the sampling parameters, either at the top level (Triton's
way) or under ``"parameters"`` (which wins where both give one). Unknown keys are kept and
ignored, as Triton does. Every value is checked here, so a server that validates with
:class:`GenerateRequest` answers a bad one with a message that names the field.

The answer to ``generate`` and each event of ``generate_stream`` are a :class:`GenerateResponse`:
``text_output`` (the new piece of text), and on the last one ``finish_reason`` and the token
counts.

>>> request = GenerateRequest.model_validate({"text_input": "Hi", "parameters": {"max_tokens": 8}})
>>> request.sampling()["max_tokens"]
8
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

__all__ = [
    "MAX_STOP_STRINGS",
    "FinishReason",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "Stop",
    "finite_number",
    "stop_strings",
    "whole_number",
]

MAX_STOP_STRINGS = 16
"""The most stop strings one request may give."""

FinishReason = Literal["stop", "length"]


def _whole_number(value: Any) -> Any:
    """JSON integers, and floats that hold one (``8.0``); never booleans or strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be an integer, not {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be an integer, not {value!r}")
        return int(value)
    return value


def _number(value: Any) -> Any:
    """Finite JSON numbers; never booleans or strings."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value!r}")
    return float(value)


def _stop(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ValueError("must be a non-empty string or a list of them")
    if len(value) > MAX_STOP_STRINGS:
        raise ValueError(f"takes at most {MAX_STOP_STRINGS} strings")
    return value


def whole_number(value: Any) -> Any:
    """A before-validator for integer fields: ``None`` or :func:`_whole_number`."""
    return value if value is None else _whole_number(value)


def finite_number(value: Any) -> Any:
    """A before-validator for number fields: ``None`` or :func:`_number`."""
    return value if value is None else _number(value)


def stop_strings(value: Any) -> Any:
    """A before-validator for ``stop``: ``None`` or the stop strings as a list."""
    return value if value is None else _stop(value)


Stop = list[str] | str
"""Stop strings: one non-empty string or a list of up to :data:`MAX_STOP_STRINGS` of them
(always a list once validated)."""


class GenerateParameters(BaseModel):
    """The sampling parameters of a generate request; ``None`` (or absent) means the model's
    default. ``top_k`` 0 or -1: no top-k cut."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, ge=-1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    stop: Stop | None = None
    ignore_eos: StrictBool | None = None
    return_token_ids: StrictBool | None = Field(
        default=None, description="also answer the ids of the generated tokens (token_ids)"
    )

    _whole = field_validator("max_tokens", "top_k", "seed", mode="before")(whole_number)
    _finite = field_validator("temperature", "top_p", mode="before")(finite_number)
    _stop = field_validator("stop", mode="before")(stop_strings)


_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")


class GenerateRequest(GenerateParameters):
    """The body of ``generate`` and ``generate_stream``."""

    text_input: StrictStr
    id: StrictStr | None = None
    parameters: GenerateParameters | None = None

    def _merged(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in GenerateParameters.model_fields}
        if self.parameters is not None:
            for key in self.parameters.model_fields_set & GenerateParameters.model_fields.keys():
                values[key] = getattr(self.parameters, key)
        return values

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters, ``parameters`` over the top level (``None``: default)."""
        merged = self._merged()
        return {key: merged[key] for key in _SAMPLING}

    @property
    def wants_token_ids(self) -> bool:
        return bool(self._merged()["return_token_ids"])


class GenerateResponse(BaseModel):
    """The answer to ``generate``, and each event of ``generate_stream``: a piece of text, and
    on the last one the finish reason and the token counts."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    text_output: str = ""
    token_ids: list[int] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def wire(self) -> dict[str, Any]:
        """The JSON object as sent: fields that are ``None`` are left out."""
        return self.model_dump(exclude_none=True)
