"""Official SQuAD v1.1 / HotpotQA metrics on hand-computed cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragsoup.errors import RagsoupError
from ragsoup.metrics import best_em_f1, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "cat"),
        ("  A  quick,  brown fox. ", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("Theater and Anthem", "theater and anthem"),  # articles only as whole words
        ("the-cat", "thecat"),  # punctuation goes before articles are removed (official order)
        ("U.S.A.", "usa"),
        ("A", ""),
        ("", ""),
        ("Hello\tWorld\n", "hello world"),
        ("rock 'n' roll", "rock n roll"),
        ("\u201cquoted\u201d", "\u201cquoted\u201d"),  # curly quotes are not string.punctuation
        ("THE END", "end"),
        ("$1,000.50", "100050"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower.", 1.0),
        ("Eiffel", "Eiffel Tower", 0.0),
        ("", "", 1.0),
        ("a", "the", 1.0),  # both normalise to ""
        ("yes", "Yes.", 1.0),
        ("cat", "", 0.0),
    ],
)
def test_exact_match(pred: str, gold: str, expected: float) -> None:
    assert exact_match(pred, gold) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("the cat sat", "cat sat on mat", 2 * (1.0 * 0.5) / 1.5),  # P=2/2, R=2/4 -> 0.667
        ("cat sat on mat", "the cat sat", 2 * (0.5 * 1.0) / 1.5),  # symmetric
        ("Cat sat on the mat.", "cat sat on mat", 1.0),
        ("cat dog", "dog cat", 1.0),  # bag of tokens
        ("cat cat cat", "cat", 0.5),  # common=min(3,1)=1: P=1/3, R=1
        ("New York City", "New York", 0.8),  # P=2/3, R=1
        ("Barack Obama", "President Barack Obama Jr.", 2 * (1.0 * 0.5) / 1.5),
        ("dog", "cat", 0.0),
        ("yes", "yes", 1.0),
        ("Yes.", "yes", 1.0),
        ("yes", "no", 0.0),
        ("yes it is", "yes", 0.0),  # gold is "yes" and they differ (plain F1 would be 0.5)
        ("no", "no way", 0.0),  # prediction is "no" and they differ (plain F1 would be 0.667)
        ("noanswer", "no answer", 0.0),
        ("", "", 0.0),  # official v1.1/HotpotQA: no common tokens -> 0
        ("", "cat", 0.0),
        ("cat", "", 0.0),
        ("the", "a", 0.0),  # both empty after normalisation
    ],
)
def test_f1_score(pred: str, gold: str, expected: float) -> None:
    assert f1_score(pred, gold) == pytest.approx(expected)


def test_partial_overlap_value_from_brief() -> None:
    assert round(f1_score("the cat sat", "cat sat on mat"), 3) == 0.667


def test_best_em_f1_takes_max_over_golds() -> None:
    assert best_em_f1("the cat sat", ["dog", "cat sat on mat", "Cat sat!"]) == (1.0, 1.0)
    em, f1 = best_em_f1("New York City", ["new york", "York"])
    assert em == 0.0
    assert f1 == pytest.approx(0.8)  # max(0.8, 0.5)
    em, f1 = best_em_f1("Paris", ["London"])
    assert (em, f1) == (0.0, 0.0)


def test_best_em_f1_single_string_and_empty() -> None:
    assert best_em_f1("Paris", "paris") == (1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(RagsoupError):
        best_em_f1("Paris", [])


_text = st.lists(st.sampled_from(list("abc tn.,!AY") + ["yes", "no", "the ", " a "]), max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(_text, _text)
def test_metric_properties(pred: str, gold: str) -> None:
    f1 = f1_score(pred, gold)
    assert 0.0 <= f1 <= 1.0
    assert f1 == pytest.approx(f1_score(gold, pred))
    if exact_match(pred, gold) == 1.0 and normalize_answer(gold):
        assert f1 == pytest.approx(1.0)
    assert normalize_answer(normalize_answer(pred)) == normalize_answer(pred)
