"""Prompt features: option splitting and what the features respond to."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from llmesh.services.classifier.complexity.features import FEATURE_NAMES, prompt_features, split_prompt, strip_options

MMLU = "Find the degree of Q(sqrt(2)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"


def feature(text: str, name: str) -> float:
    return prompt_features(text)[FEATURE_NAMES.index(name)]


def test_lettered_options_are_split_from_the_stem():
    parts = split_prompt(MMLU)
    assert parts.stem == "Find the degree of Q(sqrt(2)) over Q."
    assert parts.options == ("0", "4", "2", "6")
    assert strip_options(MMLU) == parts.stem


def test_a_plain_question_is_all_stem_even_with_a_lettered_line():
    assert split_prompt("What is 2 + 2?").options == ()
    # One lettered line is not an option block.
    assert split_prompt("Consider:\nA. the first case only").options == ()
    # Options must start at A.
    assert split_prompt("Pick:\nB. x\nC. y").options == ()


def test_features_respond_to_numbers_steps_and_options():
    word_problem = (
        "Janet has 16 eggs. She eats 3 and bakes with 4. She sells the rest at $2 each. "
        "How much does she make every day?"
    )
    recall = "Who wrote Hamlet?"
    assert feature(word_problem, "numbers_log") > feature(recall, "numbers_log")
    assert feature(word_problem, "calculation_cues") > 0
    assert feature(word_problem, "quantity_words_rate") > 0
    assert feature(recall, "recall_cues") > 0
    assert feature(MMLU, "has_options") == 1.0 and feature(word_problem, "has_options") == 0.0
    assert feature(MMLU, "option_numeric_share") == 1.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_features_are_finite_for_any_text(text):
    values = prompt_features(text)
    assert len(values) == len(FEATURE_NAMES)
    assert all(math.isfinite(v) for v in values)


def test_option_structure_and_question_form():
    near = "Which value is correct?\nA. 2.5 m/s\nB. 25 m/s\nC. 0.25 m/s\nD. 250 m/s\nAnswer:"
    apart = "Which is a mammal?\nA. a whale\nB. a shark\nC. a trout\nD. an eel\nAnswer:"
    assert feature(near, "options_all_numeric") == 1.0 and feature(apart, "options_all_numeric") == 0.0
    worded = "Pick one.\nA. the rate rises sharply\nB. the rate rises slowly\nC. the rate falls\nD. no change\nAnswer:"
    assert feature(worded, "option_overlap") > feature(apart, "option_overlap")
    assert feature(worded, "longest_option_log") > feature(near, "longest_option_log")
    assert feature("All of these are true EXCEPT:\nA. x y\nB. y z\nAnswer:", "caps_negation") == 1.0
    assert feature("This is not the case. Which holds?", "caps_negation") == 0.0
    # The question word is read from the last sentence, after a scenario.
    scenario = "What a day it was. Tom left at noon. Why did he leave?"
    assert feature(scenario, "asks_why") == 1.0 and feature(scenario, "asks_what") == 0.0
    assert feature("Photosynthesis occurs in chloroplasts.", "syllables_per_word") > feature(
        "The cat sat on the mat.", "syllables_per_word"
    )
    # An open question has no option features.
    for name in ("option_overlap", "options_all_numeric", "option_stem_ratio_log", "longest_option_log"):
        assert feature("How many apples are left if Tom eats 3 of 12?", name) == 0.0
