"""The kit's bound on caller-chosen label values."""

from __future__ import annotations

import pytest
from llmesh.kit.metrics import OTHER, UNSET, BoundedLabel


def test_first_values_kept_then_folded_into_other():
    label = BoundedLabel("use_case", 3)
    assert [label(v) for v in ("a", "b", "c")] == ["a", "b", "c"]
    assert label("d") == OTHER
    assert label("e") == OTHER
    # A value admitted before keeps its own series.
    assert label("b") == "b"


def test_empty_is_none_and_reserved_names_cannot_be_taken():
    label = BoundedLabel("business_unit", 5)
    assert label("") == UNSET
    assert label(None) == UNSET
    assert label(OTHER) == OTHER
    assert label("x") == "x"


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        BoundedLabel("tenant", 0)
