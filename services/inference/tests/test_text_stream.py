"""Token bytes → text deltas: split UTF-8 characters and stop sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from llmesh.services.inference.text_stream import RepeatedLineGuard, TextAssembler


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


def guarded(pieces: list[str], limit: int = 3) -> tuple[str, RepeatedLineGuard]:
    guard = RepeatedLineGuard(limit)
    out = [guard.feed(p) for p in pieces]
    if not guard.stopped:
        out.append(guard.finish())
    return "".join(out), guard


def test_a_line_repeated_three_times_stops_the_stream_before_the_third_copy():
    text, guard = guarded(["Na", "me\n", "Name\n", "\n", "Na", "me", "\nName\nmore"])
    assert guard.stopped and text == "Name\nName\n\n"


def test_different_lines_and_a_diverging_line_pass_through():
    text, guard = guarded(["Paris is\n", "Paris is\n", "Paris is the capital.\n", "Done"])
    assert not guard.stopped and text == "Paris is\nParis is\nParis is the capital.\nDone"


def test_text_is_held_only_while_it_may_become_the_stopping_copy():
    guard = RepeatedLineGuard(3)
    assert guard.feed("a\n") == "a\n" and guard.feed("a\n") == "a\n"
    assert guard.feed("a") == "", "may be the third copy"
    assert guard.feed("b") == "ab", "no longer a copy: sent"
    assert guard.finish() == ""


def test_a_repeated_last_line_without_newline_stops_at_the_end_and_zero_turns_it_off():
    text, guard = guarded(["x\nx\n", "x"])
    assert guard.stopped and text == "x\nx\n"
    text, guard = guarded(["x\n"] * 5, limit=0)
    assert not guard.stopped and text == "x\n" * 5
