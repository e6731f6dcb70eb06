"""`pfn compare`: a paired NLL difference between two models of one prior."""

import pytest

import pfn
from pfn.benchmarks.compare import compare_models
from pfn.cli import main
from pfn.training import train
from tests.conftest import tiny_config


def test_a_trained_model_beats_an_untrained_one_and_equals_itself(tmp_path, tiny_model_path):
    trained, untrained = pfn.load(tiny_model_path), pfn.load(train(tiny_config(tmp_path, "--train.max_steps", "1")))
    rows = compare_models(trained, untrained, contexts=[5, 20], features=[1, 2], num_datasets=60, num_queries=5)
    assert [row["datasets"] for row in rows] == [60, 60]
    for row in rows:
        assert row["difference"] == pytest.approx(row["new_nll"] - row["old_nll"])
        assert row["difference"] < -5 * row["difference_se"]
    same = compare_models(trained, trained, contexts=[5], features=[1], num_datasets=20)
    assert same[0]["difference"] == 0 and same[0]["difference_se"] == 0


def test_models_of_different_priors_are_refused(tiny_model_path, capsys):
    with pytest.raises(SystemExit, match="trained on different priors"):
        main(["compare", str(tiny_model_path), "gmm", "--datasets", "10"])
    main(["compare", str(tiny_model_path), str(tiny_model_path), "--datasets", "10", "--context", "3"])
    assert "| 3 | 10 |" in capsys.readouterr().out
