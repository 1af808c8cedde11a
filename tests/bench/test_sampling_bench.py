"""bench/sampling.py at a tiny size: its report has every field, both sides answered every prompt,
and transformers' greedy answers cut at EOS are compared answer for answer with ours."""

from __future__ import annotations

import pytest

from tests.bench.conftest import load_bench

FIELDS = {"prompts", "new_tokens", "batch", "threads", "params", "ours_tokens", "hf_tokens", "ours_seconds",
          "hf_seconds", "ours_tokens_per_second", "hf_tokens_per_second", "ratio", "identical_outputs",
          "common_prefix_tokens", "wall_seconds"}


@pytest.fixture(scope="module")
def bench():
    return load_bench("sampling")


def test_a_tiny_run_reports_every_field(bench):
    args = bench.parser().parse_args(["--prompts", "6", "--new-tokens", "5", "--dim", "32", "--layers", "1",
                                      "--heads", "2", "--batch", "4", "--repeats", "1"])
    report = bench.run(args)
    assert set(report) == FIELDS
    assert report["prompts"] == 6 and report["new_tokens"] == 5
    # Every prompt gets between 1 and 5 new tokens on each side.
    assert 6 <= report["ours_tokens"] <= 30 and 6 <= report["hf_tokens"] <= 30
    assert 0 <= report["identical_outputs"] <= 1 and 0 <= report["common_prefix_tokens"] <= 1
    assert report["ratio"] == pytest.approx(report["ours_tokens_per_second"] / report["hf_tokens_per_second"])


def test_agreement_counts_whole_answers_and_the_tokens_before_the_first_difference(bench):
    # Identical; differs at token 2 of 4; one is a prefix of the other (3 of 4 tokens agree).
    assert bench.agreement([[1, 2], [1, 2, 3, 4], [5, 6, 7]], [[1, 2], [1, 2, 9, 4], [5, 6, 7, 2]]) == \
        (pytest.approx(1 / 3), pytest.approx((2 + 2 + 3) / (2 + 4 + 4)))
