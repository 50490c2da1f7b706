"""The tokenizer wrapper: incremental detokenization into complete UTF-8 pieces, chat templates,
special tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maas_server.errors import BadRequestError
from maas_server.tokenizer import DEFAULT_CHAT_TEMPLATE, TextTokenizer, TokenizerError
from tests.server.conftest import TINY_GPT

TOKENIZER = TextTokenizer.load(TINY_GPT)


def pieces_of(tokenizer: TextTokenizer, prompt: list[int], ids: list[int]) -> list[str]:
    detokenizer = tokenizer.detokenizer(prompt)
    pieces = [detokenizer.push(t) for t in ids]
    return [*pieces, detokenizer.flush()]


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.lists(st.integers(1, 1023), max_size=6),
    ids=st.lists(st.integers(0, 1023), max_size=40),
)
def test_pieces_join_to_the_whole_decode(prompt: list[int], ids: list[int]) -> None:
    pieces = pieces_of(TOKENIZER, prompt, ids)
    assert "".join(pieces) == TOKENIZER.decode(ids)
    assert all(not p.endswith("\ufffd") for p in pieces[:-1])


def test_multibyte_characters_wait_for_their_last_byte() -> None:
    ids = TOKENIZER.encode("é€😀 ok")
    byte_tokens = [t for t in ids if "\ufffd" in TOKENIZER.decode([t])]
    assert byte_tokens  # the tiny vocabulary splits these characters into bytes
    pieces = pieces_of(TOKENIZER, [], ids)
    assert "".join(pieces) == "é€😀 ok"
    assert "\ufffd" not in "".join(pieces)
    assert pieces.count("") >= len(byte_tokens) - 3  # held back until complete


def test_leading_space_of_the_first_piece_is_kept() -> None:
    prompt = TOKENIZER.encode("Copyright")
    ids = TOKENIZER.encode(" notice")
    assert "".join(pieces_of(TOKENIZER, prompt, ids)) == " notice"


def test_special_tokens() -> None:
    assert TOKENIZER.eos_token == "<|endoftext|>"
    assert TOKENIZER.eos_token_id == 0
    assert TOKENIZER.bos_token_id == 0
    assert TOKENIZER.encode("a<|endoftext|>b") == [
        TOKENIZER.encode("a")[0],
        0,
        *TOKENIZER.encode("b"),
    ]
    assert TOKENIZER.decode([0, *TOKENIZER.encode("hi")]) == "hi"


def test_chat_template_from_tokenizer_config() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
        },
    ]
    assert TOKENIZER.has_chat_template
    assert TOKENIZER.apply_chat_template(messages) == "system: Be brief.\nuser: Hi!\nassistant:"
    with pytest.raises(BadRequestError, match="text content parts"):
        TOKENIZER.apply_chat_template([{"role": "user", "content": [{"type": "image_url"}]}])


def copy_tokenizer(tmp_path: Path, config: dict[str, object] | None) -> Path:
    shutil.copy(TINY_GPT / "tokenizer.json", tmp_path / "tokenizer.json")
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_default_chat_template_without_config(tmp_path: Path) -> None:
    tokenizer = TextTokenizer.load(copy_tokenizer(tmp_path, None))
    assert not tokenizer.has_chat_template
    assert tokenizer.eos_token_id is None
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}]) == "user: x\nassistant:"
    )
    assert "message['role']" in DEFAULT_CHAT_TEMPLATE


def test_chat_template_file_and_raise_exception(tmp_path: Path) -> None:
    copy_tokenizer(tmp_path, {"eos_token": {"content": "<|endoftext|>", "special": True}})
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    )
    tokenizer = TextTokenizer.load(tmp_path)
    assert tokenizer.eos_token_id == 0
    assert tokenizer.apply_chat_template([{"role": "user", "content": "a"}]) == "[a]"
    with pytest.raises(BadRequestError, match="user first"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "a"}])


def test_named_chat_templates(tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    tokenizer = TextTokenizer.load(copy_tokenizer(tmp_path, {"chat_template": templates}))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "a"}]) == "D"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json is missing"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"cannot read tokenizer\.json"):
        TextTokenizer.load(tmp_path)
    copy_tokenizer(tmp_path, None)
    (tmp_path / "tokenizer_config.json").write_text("[1]")
    with pytest.raises(TokenizerError, match="JSON object"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(TokenizerError, match="does not compile"):
        TextTokenizer.load(tmp_path)


LINKED_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


@pytest.mark.parametrize("filename", LINKED_FILES)
def test_files_linked_out_of_the_model_folder_are_refused(tmp_path: Path, filename: str) -> None:
    """As for the labels file: a link that leads out of the model's folder is not followed."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_tokenizer(model_dir, {"eos_token": "<|endoftext|>"})
    (model_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (model_dir / filename).rename(outside / filename)
    (model_dir / filename).symlink_to(outside / filename)
    with pytest.raises(TokenizerError, match=f"{filename} lies outside the model's folder"):
        TextTokenizer.load(model_dir)
    # A link that stays inside the folder is followed.
    (model_dir / filename).unlink()
    (outside / filename).rename(model_dir / f"real-{filename}")
    (model_dir / filename).symlink_to(model_dir / f"real-{filename}")
    tokenizer = TextTokenizer.load(model_dir)
    assert tokenizer.decode(tokenizer.encode("Copyright")) == "Copyright"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"


def test_a_chat_template_that_is_not_utf8_is_a_tokenizer_error(tmp_path: Path) -> None:
    copy_tokenizer(tmp_path, None)
    (tmp_path / "chat_template.jinja").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(TokenizerError, match=r"cannot read chat_template\.jinja"):
        TextTokenizer.load(tmp_path)
