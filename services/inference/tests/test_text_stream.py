"""Token bytes → text deltas: split UTF-8 characters and stop sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from llmesh.services.inference.text_stream import TextAssembler


def run(pieces: list[bytes], stop=()) -> tuple[list[str], TextAssembler]:
    assembler = TextAssembler(stop)
    out = [assembler.feed(p) for p in pieces]
    out.append(assembler.finish())
    return [t for t in out if t], assembler


def test_plain_text_passes_through_token_by_token():
    deltas, assembler = run([b"Hello", b",", b" world"])
    assert deltas == ["Hello", ",", " world"]
    assert not assembler.stopped


def test_a_character_split_across_tokens_is_sent_whole():
    snowman = "☃".encode()
    assembler = TextAssembler()
    assert [assembler.feed(p) for p in (b"a", snowman[:1], snowman[1:2], snowman[2:], b"b")] == ["a", "", "", "☃", "b"]


def test_stop_sequence_is_cut_and_never_sent():
    deltas, assembler = run([b"one ", b"two ", b"EN", b"D three"], stop=["END"])
    assert "".join(deltas) == "one two "
    assert assembler.stopped
    assert assembler.feed(b"more") == ""


def test_text_that_only_looks_like_a_stop_start_is_released():
    deltas, assembler = run([b"a E", b"N", b"x"], stop=["END"])
    assert deltas == ["a ", "ENx"]
    assert not assembler.stopped


def test_held_prefix_is_flushed_when_generation_ends():
    deltas, assembler = run([b"abc EN"], stop=["END"])
    assert deltas == ["abc ", "EN"]
    assert not assembler.stopped


def test_earliest_of_several_stop_sequences_wins():
    deltas, _ = run([b"x ## y STOP"], stop=["STOP", "##"])
    assert deltas == ["x "]


@given(st.text(max_size=60), st.lists(st.integers(1, 8), max_size=20), st.sampled_from(["", "ab", "\n\n", "é!"]))
def test_output_is_the_text_up_to_the_first_stop(text, cuts, stop):
    data = text.encode()
    pieces, i = [], 0
    for cut in cuts:
        pieces.append(data[i : i + cut])
        i += cut
    pieces.append(data[i:])
    deltas, _ = run(pieces, stop=[stop] if stop else [])
    expected = text.split(stop)[0] if stop else text
    assert "".join(deltas) == expected
