"""bench/ppo.py at a tiny size: its report has every field, the pieces' shares make the whole
iteration, every sample was generated and trained on, and MFU is reported when a peak is given."""

from __future__ import annotations

import pytest

from tests.bench.conftest import load_bench

FIELDS = {"model", "params", "samples", "new_tokens", "threads", "steps", "seconds", "role_seconds", "shares",
          "iteration_seconds", "samples_per_second", "piece_samples_per_second", "generated_tokens",
          "generation_tokens_per_second", "training_tokens_per_second", "training_answer_tokens_per_second", "mfu",
          "mean_kl", "wall_seconds"}


@pytest.fixture(scope="module")
def bench():
    return load_bench("ppo")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_tiny_run_reports_every_field(bench):
    args = bench.parser().parse_args(["--samples", "8", "--new-tokens", "5", "--mini-batch", "4", "--micro-batch", "2",
                                      "--batch", "4", "--peak-flops", "1e12"])
    report = bench.run(args)
    assert set(report) == FIELDS
    assert set(report["seconds"]) == set(report["shares"]) == set(bench.PIECES)
    assert set(report["role_seconds"]) == {"policy", "reference", "value", "helpfulness", "safety"}
    assert report["shares"] == {name: pytest.approx(s / report["iteration_seconds"])
                                for name, s in report["seconds"].items()}
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert report["seconds"]["scoring"] == pytest.approx(sum(report["role_seconds"].values()))
    assert report["steps"] == 2 and 8 <= report["generated_tokens"] <= 40
    # The policy scores its own samples and is the reference: no KL yet.
    assert report["mean_kl"] == pytest.approx(0.0, abs=1e-5)
    assert report["mfu"] is not None and 0 < report["mfu"] < 1
