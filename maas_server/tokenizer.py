"""A text-generation model's tokenizer: ``tokenizer.json`` (read by the ``tokenizers`` package),
the special tokens and chat template of ``tokenizer_config.json``, and incremental detokenization.

Generated tokens become text one piece at a time. A byte-level tokenizer can split one character
across tokens, so a piece is released only once it decodes to complete UTF-8 text (vLLM's
prefix/read offset scheme): a client never sees half a character or a stray U+FFFD that the next
token would have completed.

>>> tokenizer = TextTokenizer.load(Path("examples/model_repository/tiny_gpt"))
>>> ids = tokenizer.encode("Copyright")
>>> tokenizer.decode(ids)
'Copyright'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .errors import BadRequestError

__all__ = ["DEFAULT_CHAT_TEMPLATE", "IncrementalDetokenizer", "TextTokenizer", "TokenizerError"]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""The chat template of a tokenizer configuration that has none: ``role: content`` lines."""

_REPLACEMENT = "\ufffd"
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_CONTEXT_TOKENS = 4  # prompt tokens decoded before the first generated one (leading spaces)


class TokenizerError(Exception):
    """A tokenizer that cannot be used; the message says which file and why."""


def _inside(model_dir: Path, filename: str) -> Path:
    """``model_dir / filename`` with links followed, refused when it lies outside the folder."""
    root = model_dir.resolve()
    path = (model_dir / filename).resolve()
    if not path.is_relative_to(root):
        raise TokenizerError(f"{filename} lies outside the model's folder")
    return path


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        content: str = value["content"]
        return content
    return None


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class TextTokenizer:
    """Encode prompts, decode tokens, render chat prompts.

    Load it from a model folder with :meth:`load`; ``detokenizer(prompt_ids)`` starts the
    incremental decoding of one sequence.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: Mapping[str, Any],
        chat_template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token_id = self._id_of(self.eos_token)
        self.bos_token_id = self._id_of(self.bos_token)
        template = chat_template if chat_template is not None else config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        self.has_chat_template = isinstance(template, str)
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_exception
        try:
            self._chat_template = environment.from_string(
                template if isinstance(template, str) else DEFAULT_CHAT_TEMPLATE
            )
        except TemplateError as exc:
            raise TokenizerError(f"the chat template does not compile: {exc}") from None

    @classmethod
    def load(
        cls,
        model_dir: Path,
        tokenizer_file: str = "tokenizer.json",
        config_file: str = "tokenizer_config.json",
    ) -> TextTokenizer:
        """The tokenizer of a model folder; :class:`TokenizerError` says what is wrong.

        Every file must lie inside the model's folder once symbolic links are followed (as the
        labels file must): a link out of the repository is refused, not read."""
        path = _inside(model_dir, tokenizer_file)
        if not path.is_file():
            raise TokenizerError(f"{tokenizer_file} is missing from the model's folder")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise TokenizerError(f"cannot read {tokenizer_file}: {exc}") from None
        config: dict[str, Any] = {}
        config_path = _inside(model_dir, config_file)
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise TokenizerError(f"cannot read {config_file}: {exc}") from None
            if not isinstance(loaded, dict):
                raise TokenizerError(f"{config_file} must hold a JSON object")
            config = loaded
        template_path = _inside(model_dir, _CHAT_TEMPLATE_FILE)
        template = None
        if "chat_template" not in config and template_path.is_file():
            try:
                template = template_path.read_text(encoding="utf-8")
            except (OSError, ValueError) as exc:
                raise TokenizerError(f"cannot read {_CHAT_TEMPLATE_FILE}: {exc}") from None
        return cls(tokenizer, config, template)

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id: int | None = self.tokenizer.token_to_id(token)
        return token_id

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens (incomplete UTF-8 shows as U+FFFD)."""
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt for a conversation, ready for the assistant's turn.

        Content given as OpenAI content parts (``[{"type": "text", "text": ...}]``) is joined.
        A template that refuses the conversation (``raise_exception``) is a 400.
        """
        plain = [{**m, "content": _content_text(m.get("content"))} for m in messages]
        try:
            rendered: str = self._chat_template.render(
                messages=plain,
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:
            raise BadRequestError(f"the chat template refused the messages: {exc}") from None
        return rendered

    def detokenizer(self, prompt_ids: Sequence[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise BadRequestError("only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError("a text content part needs a string 'text'")
            parts.append(text)
        return "".join(parts)
    raise BadRequestError("message content must be a string or a list of text parts")


class IncrementalDetokenizer:
    """Turns one sequence's tokens into text pieces as they come.

    ``push(token_id)`` returns the new complete text ("" while a character is still incomplete);
    ``flush()`` returns what is held back at the end, decoded as it stands.
    """

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int]) -> None:
        self._decode = tokenizer.decode
        # The prompt's last tokens are decoded first so that a piece keeps the leading space
        # some decoders drop at the start of a text; not when they end in an incomplete
        # character, whose last bytes the generated text would otherwise complete.
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_text = self._decode(self._ids)
        if _REPLACEMENT in self._prefix_text:
            self._ids, self._prefix_text = [], ""
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT):
            return ""
        delta = text[len(self._prefix_text) :]
        # the tokens just read become the context of the next piece
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta

    def flush(self) -> str:
        text = self._decode(self._ids)
        held = text[len(self._prefix_text) :] if len(text) > len(self._prefix_text) else ""
        self._ids, self._read, self._prefix_text = [], 0, ""
        return held
