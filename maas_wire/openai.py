"""Wire models of the OpenAI routes maas serves: ``POST /v1/completions``,
``POST /v1/chat/completions`` and ``POST /v1/embeddings`` (requests; the answers follow OpenAI's
documented shapes).

Only what maas implements is typed. Other keys are kept (``extra="allow"``) so that a server can
refuse options that would change the answer (``logprobs``, ``echo``, penalties, tools) by name
rather than ignore them: :meth:`OpenAIRequest.unsupported` lists those a request asks for.

>>> request = CompletionRequest.model_validate({"model": "tiny_gpt", "prompt": "Hi", "n": 2})
>>> request.prompts()
['Hi']
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from .generate import Stop, finite_number, stop_strings, whole_number

__all__ = [
    "MAX_CHOICES",
    "UNSUPPORTED_OPTIONS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "OpenAIRequest",
    "StreamOptions",
]

MAX_CHOICES = 16
"""The largest ``n`` a request may ask for."""

UNSUPPORTED_OPTIONS = (
    "echo",
    "suffix",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "functions",
)
"""Options that change the answer and that maas does not implement."""

TokenIds = list[StrictInt]
Prompt = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class OpenAIRequest(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: Annotated[StrictStr, Field(min_length=1, description="a repository model's name")]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: Stop | None = None
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=-1, description="maas extension")
    ignore_eos: StrictBool | None = Field(default=None, description="maas extension")
    best_of: int | None = Field(default=None, description="only 1 is supported")
    response_format: dict[str, Any] | None = Field(
        default=None, description="only {'type': 'text'} is supported"
    )

    _whole = field_validator("max_tokens", "n", "seed", "top_k", "best_of", mode="before")(
        whole_number
    )
    _finite = field_validator("temperature", "top_p", mode="before")(finite_number)
    _stop = field_validator("stop", mode="before")(stop_strings)

    def unsupported(self) -> list[str]:
        """The options asked for that maas does not implement (null, false, 0, "" and empty
        collections all mean "not asked for")."""
        extra = self.model_extra or {}
        asked = [key for key in UNSUPPORTED_OPTIONS if extra.get(key)]
        if self.best_of not in (None, 1):
            asked.append("best_of")
        if self.response_format is not None and self.response_format.get("type") != "text":
            asked.append("response_format")
        return asked

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self, max_tokens: int | None) -> dict[str, Any]:
        """The sampling parameters in the generate extension's names (``None``: default)."""
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
        }


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``. ``prompt``: a string, a list of strings, a list of token ids
    or a list of such lists; each prompt gets ``n`` choices."""

    prompt: Prompt

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("must hold at least one prompt")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or as token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        out: list[str | list[int]] = []
        for item in prompt:
            if isinstance(item, int):  # one list of token ids
                return [[int(t) for t in prompt if isinstance(t, int)]]
            out.append(item if isinstance(item, str) else list(item))
        return out

    @property
    def prompt_count(self) -> int:
        """How many prompts the request holds (a list of token ids is one)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return 1
        return len(prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: Any = None


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: ``messages`` rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)

    _whole_limit = field_validator("max_completion_tokens", mode="before")(whole_number)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens``, else ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``. ``input``: a string, a list of strings, a list of token ids or
    a list of such lists; ``encoding_format`` ``float`` or ``base64`` (little-endian float32);
    ``dimensions`` asks for shorter embeddings where the model allows it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: Annotated[StrictStr, Field(min_length=1, description="a repository model's name")]
    input: Prompt
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: StrictStr | None = None

    _whole = field_validator("dimensions", mode="before")(whole_number)

    def inputs(self) -> list[str] | list[list[int]]:
        """The texts, or the token id lists (an empty list when ``input`` is one)."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if not given:
            return []
        if all(isinstance(item, str) for item in given):
            return [item for item in given if isinstance(item, str)]
        if all(isinstance(item, int) for item in given):
            return [[item for item in given if isinstance(item, int)]]
        return [list(item) for item in given if isinstance(item, list)]
