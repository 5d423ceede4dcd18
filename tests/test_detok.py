"""TextAssembler (inference.detok): incremental UTF-8 and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from inference.detok import TextAssembler
from inference.testing import FakeBackend, together
from inference.types import Token

REPLACEMENT = "\ufffd"

#: A small alphabet, with 2-, 3- and 4-byte characters, so that stop strings match often.
ALPHABET = st.sampled_from(["a", "b", " ", "é", "ß", "日", "本", "🙂", "\n"])


def chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points) if b > a] or [b""]


def feed(asm: TextAssembler, parts: Sequence[bytes]) -> tuple[list[Token], list[Token]]:
    """(tokens emitted while pushing, tokens of the final flush)."""
    out: list[Token] = []
    for i, part in enumerate(parts):
        out.extend(asm.push(i, part))
        if asm.stopped:
            return out, []
    return out, asm.flush()


def text_of(tokens: Sequence[Token]) -> str:
    return "".join(t.text for t in tokens)


# -- UTF-8 -------------------------------------------------------------------------


@settings(deadline=None)  # no flaky deadlines on a busy machine
@given(text=st.text(), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_split_characters_never_show_replacement(text: str, cuts: list[int]) -> None:
    assume(REPLACEMENT not in text)
    parts = chunks(text.encode("utf-8"), cuts)
    asm = TextAssembler()
    emitted, flushed = feed(asm, parts)
    assert flushed == []  # without stop strings nothing is ever held back
    assert [t.id for t in emitted] == list(range(len(parts))), "one token out per token in"
    assert text_of(emitted) == text
    for tok in emitted:
        assert REPLACEMENT not in tok.text


def test_a_character_arrives_whole_with_the_token_that_completes_it() -> None:
    asm = TextAssembler()
    data = "日".encode()
    assert asm.push(1, data[:1]) == [Token(1, "")]
    assert asm.push(2, data[1:2]) == [Token(2, "")]
    assert asm.push(3, data[2:] + b"!") == [Token(3, "日!")]


def test_invalid_bytes_still_become_replacement_characters() -> None:
    asm = TextAssembler()
    assert asm.push(0, b"a\xffb") == [Token(0, f"a{REPLACEMENT}b")]


def test_a_character_split_across_tokens_is_held_back() -> None:
    asm = TextAssembler()
    data = "é".encode()
    assert asm.push(0, data[:1]) == [Token(0, "")]
    assert asm.push(1, data[1:]) == [Token(1, "é")]


# -- stop strings ----------------------------------------------------------------------


@settings(deadline=None)  # no flaky deadlines on a busy machine
@given(
    text=st.text(ALPHABET, max_size=30),
    stop=st.text(ALPHABET, min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
)
def test_output_is_the_text_before_the_stop(text: str, stop: str, cuts: list[int]) -> None:
    parts = chunks(text.encode("utf-8"), cuts)
    asm = TextAssembler([stop])
    emitted, flushed = feed(asm, parts)
    out = text_of(emitted) + text_of(flushed)
    at = text.find(stop)
    if at == -1:
        assert out == text
        assert not asm.stopped
    else:
        assert out == text[:at]
        assert asm.stopped and flushed == []
    assert REPLACEMENT not in out
    # Ids come out in order, each at most once.
    ids = [t.id for t in emitted + flushed]
    assert ids == sorted(set(ids))


@settings(deadline=None)  # no flaky deadlines on a busy machine
@given(
    text=st.text(ALPHABET, max_size=30),
    stops=st.lists(st.text(ALPHABET, min_size=1, max_size=3), min_size=2, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
)
def test_the_earliest_of_several_stops_wins(text: str, stops: list[str], cuts: list[int]) -> None:
    # When no stop is inside another, the first occurrence of any stop ends the
    # text, however the bytes are split into tokens.
    assume(not any(a != b and a in b for a in stops for b in stops))
    asm = TextAssembler(stops)
    emitted, flushed = feed(asm, chunks(text.encode("utf-8"), cuts))
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    assert text_of(emitted) + text_of(flushed) == text[: min(found, default=len(text))]
    # It says which stop ended the text: the one found first.
    first = min(stops, key=lambda s: text.find(s) if s in text else len(text) + 1)
    assert asm.matched == (first if found else None)


def test_a_stop_across_token_boundaries_is_never_emitted() -> None:
    asm = TextAssembler(["</s>"])
    assert asm.push(0, b"Hello") == [Token(0, "Hello")]
    assert asm.push(1, b" <") == []  # might start the stop string: held
    assert asm.push(2, b"/") == []
    assert asm.push(3, b"s> more") == [Token(1, " ")]  # cut just before the stop
    assert asm.stopped
    assert asm.flush() == []


def test_held_text_is_released_when_the_stop_does_not_match() -> None:
    asm = TextAssembler(["STOP"])
    assert asm.push(0, b"ab") == [Token(0, "ab")]
    assert asm.push(1, b"ST") == []
    assert asm.push(2, b"O") == []
    assert asm.push(3, b"?") == [Token(1, "ST"), Token(2, "O"), Token(3, "?")]
    assert not asm.stopped
    assert asm.push(4, b"S") == []
    assert asm.flush() == [Token(4, "S")]  # the generation ended without the stop
    assert asm.flush() == []


def test_a_token_holding_both_text_and_a_stop_prefix_is_held_whole() -> None:
    asm = TextAssembler(["world"])
    assert asm.push(0, b"hello wor") == []
    assert asm.push(1, b"ld!") == [Token(0, "hello ")]
    assert asm.stopped


def test_several_stops_in_one_token_cut_at_the_earliest() -> None:
    asm = TextAssembler(["B", "A"])
    assert asm.push(7, b"xxAyyB") == [Token(7, "xx")]
    asm = TextAssembler(["ab", "b"])
    assert asm.push(0, b"cab") == [Token(0, "c")]


def test_a_stop_at_the_very_start_emits_nothing() -> None:
    asm = TextAssembler(["\n"])
    assert asm.push(0, b"\nrest") == []
    assert asm.stopped
    assert asm.flush() == []


def test_stop_strings_with_split_characters() -> None:
    asm = TextAssembler(["日本"])
    data = "a日本b".encode()
    out: list[Token] = []
    for i, byte in enumerate(data):
        out.extend(asm.push(i, bytes([byte])))
        if asm.stopped:
            break
    assert text_of(out) == "a"
    assert asm.stopped


# -- through a model --------------------------------------------------------------------


def test_model_stop_strings_across_byte_tokens() -> None:
    reply = "Naïve café, 日本語. The end."
    with FakeBackend(reply=reply, repeat=False).load_model("m") as model:
        full = list(model.generate("x", max_tokens=200))
        assert text_of(full) == reply
        assert REPLACEMENT not in text_of(full)
        stream = model.generate("x", max_tokens=200, stop=["日本", "end"])
        assert stream.text() == "Naïve café, "
        assert stream.finish_reason == "stop"
        assert model.generate("x", max_tokens=200, stop="nothing like it").text() == reply


def test_logprob_assembler_keeps_each_tokens_figures_through_held_text() -> None:
    from inference.detok import LogprobAssembler
    from inference.types import TokenLogprob

    tagged = LogprobAssembler(TextAssembler(["END"]))
    alt = (TokenLogprob(1, "a", -0.1),)
    out = tagged.push(1, b"a", -0.1, alt)
    out += tagged.push(2, b"E", -0.2, ())  # held: it may start the stop string
    assert [(t.text, t.logprob) for t in out] == [("a", -0.1)] and out[0].top_logprobs == alt
    out = tagged.push(3, b"x", -0.3, ())  # not a stop after all: both released
    assert [(t.id, t.text, t.logprob) for t in out] == [(2, "E", -0.2), (3, "x", -0.3)]
    out = tagged.push(4, b"EN", -0.4, ()) + tagged.push(5, b"D!", -0.5, ())
    assert out == [] and tagged.stopped  # the stop string's tokens go with their figures
    assert tagged.flush() == []


def test_many_long_stop_strings_cost_linear_work() -> None:
    """A forced output that keeps matching a long stop string's prefix holds
    all of it back; the scan stays linear. (The quadratic scan took 41 s for
    8,000 held characters and 16 stops; 20,000 would take minutes. The
    deadline is hundreds of times what the linear scan needs.)"""
    held = 20_000
    body = "ab" * (held // 2)
    stops = [f"{i}-junk-stop-{'x' * 500}" for i in range(15)] + [body + "!"]

    def run() -> tuple[int, bool, str]:
        asm = TextAssembler(stops)
        emitted = [t for ch in body for t in asm.push(ord(ch), ch.encode())]
        return len(emitted), asm.stopped, "".join(t.text for t in asm.push(33, b"!"))

    ((emitted, stopped, after),) = together([run], timeout=30.0)
    assert (emitted, stopped) == (0, False)  # all of it might still be the stop string
    assert after == ""
    # And once it cannot be, everything held comes out at once.
    asm = TextAssembler(stops)
    for ch in body:
        asm.push(ord(ch), ch.encode())
    released = asm.push(63, b"?")
    assert "".join(t.text for t in released) == body + "?" and not asm.stopped
