"""The demo's task, its judge, and how samples become preference pairs (no model needed)."""

from __future__ import annotations

import pytest

from toy.sample import make_pairs
from toy.task import Problem, all_problems, is_correct, judge_score, split_problems


def test_problem_text():
    problem = Problem(57, 68)
    assert (problem.prompt, problem.answer, problem.id) == ("57+68=", "125", "add-57-68")
    assert Problem(0, 3).prompt == "0+3=" and Problem(0, 3).answer == "3"


@pytest.mark.parametrize(
    ("completion", "answer", "score"),
    [
        ("125", "125", 1.0),
        ("7", "7", 1.0),
        ("124", "125", 2 / 3),  # tens and hundreds right
        ("225", "125", 2 / 3),
        ("18", "19", 1 / 2),
        ("91", "19", 0.0),  # reversed: no digit in its place
        ("19", "119", 2 / 3),  # a missing leading digit
        ("0125", "125", 3 / 4),
        ("019", "19", 2 / 3),  # every aligned digit right, yet wrong: never 1
        ("", "19", 0.0),
        (" 19", "19", 0.0),  # whitespace is not forgiven
        ("19 ", "19", 0.0),
        ("1 9", "19", 0.0),
        ("abc", "19", 0.0),
        ("-19", "19", 0.0),
        ("１９", "19", 0.0),  # full-width digits are not ASCII digits
    ],
)
def test_judge_score(completion, answer, score):
    assert judge_score(completion, answer) == pytest.approx(score)
    assert is_correct(completion, answer) == (score == 1.0)
    assert 0.0 <= judge_score(completion, answer) <= 1.0


def test_every_problem_and_disjoint_splits():
    problems = all_problems()
    assert len(problems) == 100 * 100 == len({p.id for p in problems})
    splits = split_problems(n_eval=300, n_dev=200, n_pref=600, seed=3)
    sets = [set(s) for s in (splits.sft, splits.dev, splits.pref, splits.eval)]
    assert [len(s) for s in sets] == [10_000 - 1_100, 200, 600, 300]
    assert set().union(*sets) == set(problems)
    assert sum(map(len, sets)) == len(problems)  # disjoint
    assert split_problems(n_eval=300, n_dev=200, n_pref=600, seed=3) == splits
    assert split_problems(n_eval=300, n_dev=200, n_pref=600, seed=4).eval != splits.eval


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_eval": 0, "n_dev": 1, "n_pref": 1}, "n_eval must be >= 1, got 0"),
        ({"n_eval": 5000, "n_dev": 3000, "n_pref": 2000}, "leaves no fine-tuning problems"),
    ],
)
def test_split_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_problems(**kwargs)


def test_pairs_right_against_wrong_graded_and_none():
    problems = [Problem(12, 7), Problem(3, 4), Problem(50, 50), Problem(1, 1), Problem(9, 9)]
    samples = [
        ["19", "18", "19", ""],  # right vs wrong; the empty completion is never used
        ["7", "7", "7", "7"],  # all right: no pair
        ["101", "55", "55", "x"],  # none right: "101" (2 of 3 digits) beats the others
        ["3", "4", "5", "6"],  # all wrong, all scored 0: no pair
        ["18", "18", "18", "18"],  # right every time: no pair
    ]
    rows, stats = make_pairs(problems, samples, seed=0)
    assert rows[0] == {"id": "add-12-07", "prompt": "12+7=", "chosen": "19", "rejected": "18"}
    assert rows[1]["id"] == "add-50-50" and rows[1]["chosen"] == "101"
    assert rows[1]["rejected"] in {"55", "x"}
    assert len(rows) == stats.pairs == 2
    assert (stats.correct_vs_wrong, stats.graded, stats.all_correct, stats.all_tied) == (1, 1, 2, 1)
    assert (stats.prompts, stats.samples, stats.correct_samples) == (5, 20, 10)
    assert stats.sample_accuracy == 0.5


def test_pairs_draw_the_rejected_by_frequency():
    """The rejected answer is drawn in proportion to how often the model wrote it."""
    samples = [["19"] + ["18"] * 9 + ["29"]] * 400
    rows, _ = make_pairs([Problem(12, 7)] * 400, samples, seed=1)
    share = sum(r["rejected"] == "18" for r in rows) / len(rows)
    assert 0.8 < share < 0.97  # 9 in 10 expected
    assert rows == make_pairs([Problem(12, 7)] * 400, samples, seed=1)[0]
