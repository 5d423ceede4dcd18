"""The server-sent events parser of the openai backend (inference.backends.openai.sse)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.backends.openai.sse import ServerSentEvent, SSEError, SSEParser


def parse_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """The events of a whole stream given as byte chunks, as the backend feeds them."""
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


def events_of(data: bytes) -> list[ServerSentEvent]:
    return list(parse_events([data]))


def test_basic_events() -> None:
    got = events_of(b"data: one\n\ndata: two\n\n")
    assert [e.data for e in got] == ["one", "two"]
    assert all(e.event == "message" for e in got)


def test_multiline_data_joined_with_newline() -> None:
    (ev,) = events_of(b"data: a\ndata: b\ndata:\n\n")
    assert ev.data == "a\nb\n"


def test_only_one_leading_space_is_stripped() -> None:
    (ev,) = events_of(b"data:  two spaces\n\n")
    assert ev.data == " two spaces"
    (ev,) = events_of(b"data:nospace\n\n")
    assert ev.data == "nospace"


def test_line_endings_crlf_cr_lf() -> None:
    got = events_of(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n")
    assert [e.data for e in got] == ["a", "b", "c"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    got = parser.feed(b"data: a\r")
    got += parser.feed(b"\n\r")
    got += parser.feed(b"\n")
    assert [e.data for e in got] == ["a"]


def test_comments_and_unknown_fields_are_ignored() -> None:
    parser = SSEParser()
    got = parser.feed(b": ping\nfoo: bar\nnocolon\ndata: x\n\n")
    assert [e.data for e in got] == ["x"]
    assert parser.unknown_fields == 2


def test_event_type_id_and_retry() -> None:
    got = events_of(b"event: error\nid: 7\nretry: 1500\ndata: boom\n\ndata: next\n\n")
    assert got[0] == ServerSentEvent(data="boom", event="error", id="7", retry=1500)
    # The id is kept for later events; the type and retry are not.
    assert got[1] == ServerSentEvent(data="next", event="message", id="7", retry=None)


def test_id_with_nul_is_ignored_and_bad_retry_too() -> None:
    parser = SSEParser()
    got = parser.feed(b"id: 1\n\nid: a\x00b\nretry: 12x\ndata: d\n\n")
    assert got[-1].id == "1"
    assert parser.retry is None


def test_event_without_data_is_not_dispatched() -> None:
    assert events_of(b"event: ping\n\nid: 3\n\n") == []


def test_bom_is_skipped_once() -> None:
    (ev,) = events_of(b"\xef\xbb\xbfdata: x\n\n")
    assert ev.data == "x"
    # A BOM split over two chunks is still recognised.
    parser = SSEParser()
    got = parser.feed(b"\xef\xbb") + parser.feed(b"\xbfdata: y\n\n")
    assert [e.data for e in got] == ["y"]


def test_utf8_split_across_chunks() -> None:
    data = "data: naïve 日本\n\n".encode()
    parser = SSEParser()
    got: list[ServerSentEvent] = []
    for i in range(len(data)):
        got += parser.feed(data[i : i + 1])
    assert [e.data for e in got] == ["naïve 日本"]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    (ev,) = events_of(b"data: \xff\xfe\n\n")
    assert ev.data == "\ufffd\ufffd"


def test_unfinished_event_is_discarded_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: cut") == [ServerSentEvent("complete")]
    assert parser.pending
    assert parser.close() == []
    assert parser.incomplete
    assert parser.closed


def test_clean_end_is_not_incomplete() -> None:
    parser = SSEParser()
    parser.feed(b"data: x\n\n")
    parser.close()
    assert not parser.incomplete


def test_feed_after_close_raises() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(ValueError):
        parser.feed(b"data: x\n\n")


def test_line_too_long_raises() -> None:
    parser = SSEParser(max_event_size=64)
    with pytest.raises(SSEError):
        parser.feed(b"x" * 100)


def test_event_data_too_large_raises() -> None:
    parser = SSEParser(max_event_size=64)
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"a" * 40 + b"\ndata: " + b"b" * 40 + b"\n")


def test_sse_error_is_a_value_error() -> None:
    assert issubclass(SSEError, ValueError)


def test_bad_limit() -> None:
    with pytest.raises(ValueError):
        SSEParser(max_event_size=0)


def test_openai_style_stream() -> None:
    body = (
        b'data: {"choices":[{"text":" four"}]}\n\n'
        b": keep-alive\n\n"
        b'data: {"choices":[{"text":","}]}\n\n'
        b"data: [DONE]\n\n"
    )
    assert [e.data for e in events_of(body)] == [
        '{"choices":[{"text":" four"}]}',
        '{"choices":[{"text":","}]}',
        "[DONE]",
    ]


_VALUE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    max_size=12,
)  # no lone surrogates: a server sends UTF-8, which cannot carry them
_LINE = st.one_of(
    st.builds(lambda v: f"data: {v}", _VALUE),
    st.builds(lambda v: f"event: {v}", st.sampled_from(["message", "error", "x"])),
    st.builds(lambda v: f"id: {v}", st.sampled_from(["1", "2", "abc"])),
    st.just(": comment"),
    st.just(""),
    st.just("retry: 100"),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=20),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_chunking_never_changes_the_events(lines: list[str], ending: str, cuts: list[int]) -> None:
    data = ("".join(line + ending for line in lines) + ending).encode("utf-8")
    whole = events_of(data)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert list(parse_events(pieces)) == whole
