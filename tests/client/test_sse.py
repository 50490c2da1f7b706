"""The server-sent events parser: the standard's line and field rules, fed in any pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maas_client._sse import ServerSentEvent, SSEDecoder


def events_of(*pieces: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.end()


def test_data_lines_and_event_types() -> None:
    stream = (
        b'data: {"a": 1}\n\n'
        b"event: error\n"
        b"data: first\n"
        b"data: second\n\n"
        b"data:no space\n"
        b"data:  two spaces\n\n"
    )
    assert events_of(stream) == [
        ServerSentEvent("message", '{"a": 1}'),
        ServerSentEvent("error", "first\nsecond"),
        ServerSentEvent("message", "no space\n two spaces"),
    ]


def test_the_event_type_applies_to_one_event_only() -> None:
    assert [e.event for e in events_of(b"event: x\ndata: 1\n\ndata: 2\n\n")] == ["x", "message"]
    # an event without data is not dispatched, and its type is forgotten
    assert events_of(b"event: x\n\ndata: 2\n\n") == [ServerSentEvent("message", "2")]


def test_comments_unknown_fields_and_bare_names() -> None:
    stream = b": keep-alive\n:\nfoo: bar\ndata\n\nretry: 1500\nretry: soon\ndata: x\n\n"
    assert events_of(stream) == [
        ServerSentEvent("message", ""),
        ServerSentEvent("message", "x", retry=1500),
    ]


def test_a_comment_alone_dispatches_nothing() -> None:
    assert events_of(b": ping\n\n: ping\n\n") == []


def test_ids_persist_until_changed_and_ignore_nul() -> None:
    stream = b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\nid\ndata: d\n\n"
    assert [(e.data, e.id) for e in events_of(stream)] == [
        ("a", "7"),
        ("b", "7"),
        ("c", "7"),
        ("d", ""),
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    assert events_of(stream) == [ServerSentEvent("e", "1\n2"), ServerSentEvent("message", "3")]


def test_crlf_split_between_pieces_is_one_line_end() -> None:
    assert events_of(b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n") == [
        ServerSentEvent("message", "1"),
        ServerSentEvent("message", "2"),
    ]
    # a CR at the end of a piece followed by another CR: two line ends, so one blank line
    assert events_of(b"data: 1\r", b"\rdata: 2\n\n") == [
        ServerSentEvent("message", "1"),
        ServerSentEvent("message", "2"),
    ]


def test_events_come_out_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"da") == []
    assert decoder.feed(b"ta: hel") == []
    assert decoder.feed(b"lo\n") == []
    assert decoder.feed(b"\ndata: next") == [ServerSentEvent("message", "hello")]
    assert decoder.feed(b"\n\n") == [ServerSentEvent("message", "next")]


def test_an_unfinished_event_is_dropped_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: incomplete\n") == [ServerSentEvent("message", "1")]
    assert decoder.end() == []
    # the decoder starts afresh after end()
    assert decoder.feed(b"data: 2\n\n") == [ServerSentEvent("message", "2")]


def test_utf8_split_inside_a_character_and_invalid_bytes() -> None:
    text = "héllo ✓ 🙂".encode()
    stream = b"data: " + text + b"\n\n"
    pieces = [stream[i : i + 1] for i in range(len(stream))]
    assert events_of(*pieces) == [ServerSentEvent("message", "héllo ✓ 🙂")]
    assert events_of(b"data: \xff\xfe\n\n") == [ServerSentEvent("message", "\ufffd\ufffd")]


def test_a_leading_byte_order_mark_is_dropped() -> None:
    assert events_of(b"\xef\xbb", b"\xbfdata: 1\n\n") == [ServerSentEvent("message", "1")]
    # only at the start of the stream
    assert events_of(b"data: 1\n\n\xef\xbb\xbfdata: 2\n\n") == [ServerSentEvent("message", "1")]


def test_json_data() -> None:
    (event,) = events_of(b'data: {"text_output": "hi", "n": [1, 2]}\n\n')
    assert event.json() == {"text_output": "hi", "n": [1, 2]}
    (bad,) = events_of(b"data: {oops\n\n")
    with pytest.raises(ValueError):
        bad.json()


def test_a_line_that_never_ends_is_refused() -> None:
    decoder = SSEDecoder()
    with pytest.raises(ValueError, match="16 MiB"):
        for _ in range(17):
            decoder.feed(b"x" * (1024 * 1024))


_LINE = st.one_of(
    st.builds(
        lambda t: f"data: {t}",
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n")),
    ),
    st.sampled_from(["", "", "event: error", ": comment", "id: 3", "retry: 10", "data"]),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=20),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_any_split_gives_the_same_events(lines: list[str], newline: str, cuts: list[int]) -> None:
    stream = (newline.join(lines) + newline + newline).encode()
    whole = events_of(stream)
    bounds = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    assert events_of(*pieces) == whole
    assert events_of(*[stream[i : i + 1] for i in range(len(stream))]) == whole
