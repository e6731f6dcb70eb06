"""Loading and predicting: input formats, units, bad input, corrupt checkpoints, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import pfn
from pfn.checkpoint import CheckpointError
from pfn.cli import main
from pfn.estimators import PFNClassifier, PFNRegressor


@pytest.fixture(scope="module")
def model(tiny_model_path) -> pfn.PFN:
    return pfn.load(tiny_model_path)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 2))
    return x, np.sin(3 * x.sum(1)), rng.uniform(size=(5, 2))


def test_numpy_torch_and_pandas_give_the_same_prediction(model, data):
    x, y, xq = data
    reference = model.predict(x, y, xq)
    assert reference.batch_shape == (5,)
    as_torch = model.predict(torch.tensor(x), torch.tensor(y), torch.tensor(xq))
    as_pandas = model.predict(pd.DataFrame(x, columns=["a", "b"]), pd.Series(y), pd.DataFrame(xq))
    for other in (as_torch, as_pandas):
        assert torch.allclose(other.mean, reference.mean)


def test_batched_matches_unbatched(model, data):
    x, y, xq = data
    batched = model.predict(np.stack([x, x[::-1]]), np.stack([y, y[::-1]]), np.stack([xq, xq]))
    assert batched.batch_shape == (2, 5)
    single = model.predict(x, y, xq)
    assert torch.allclose(batched.mean[0], single.mean, atol=1e-5)
    assert torch.allclose(batched.mean[1], single.mean, atol=1e-5)  # permuted context


def test_predictions_come_back_in_the_callers_units(model, data):
    x, y, xq = data
    base = model.predict(x, y, xq)
    moved = model.predict(100 + 5 * x, -3 + 10 * y, 100 + 5 * xq)
    assert torch.allclose(moved.mean, -3 + 10 * base.mean, rtol=1e-4, atol=1e-4)
    assert torch.allclose(moved.icdf(0.9), -3 + 10 * base.icdf(0.9), rtol=1e-4, atol=1e-4)
    target = torch.tensor(np.cos(xq.sum(1)))
    assert torch.allclose(moved.log_prob(-3 + 10 * target), base.log_prob(target) - np.log(10.0), atol=1e-4)


def test_empty_context_is_the_prior_predictive(model):
    dist = model.predict(np.zeros((0, 2)), np.zeros(0), np.random.default_rng(0).uniform(size=(3, 2)))
    assert torch.isfinite(dist.mean).all() and (dist.stddev > 0.3).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y, q: (x, y[:-1], q), "mismatched context lengths"),
        (lambda x, y, q: (x, y, q[:, :1]), "x_query has 1 features but x_context has 2"),
        (lambda x, y, q: (np.ones((12, 3)), y, np.ones((5, 3))), "at most 2"),
        (lambda x, y, q: (x, np.where(np.arange(12) == 3, np.nan, y), q), "y_context contains NaN or inf"),
        (lambda x, y, q: (x, y, np.full_like(q, np.inf)), "x_query contains NaN or inf"),
        (lambda x, y, q: (x, y, q[:0]), "x_query is empty"),
        (lambda x, y, q: (x[:, 0], y, q), r"reshape\(-1, 1\)"),
        (lambda x, y, q: (x, y[:, None], q), "y_context must be"),
        (lambda x, y, q: (x, y, q[None]), "same number of dimensions"),
        (lambda x, y, q: (x, np.array(["a"] * 12), q), "must be numeric"),
    ],
)
def test_bad_input_gets_a_clear_error(model, data, change, message):
    with pytest.raises(ValueError, match=message):
        model.predict(*change(*data))


def test_missing_corrupt_and_newer_checkpoints(tmp_path, tiny_model_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file or shipped model named 'nope'"):
        pfn.load("nope")
    corrupt = tmp_path / "corrupt.pfn"
    corrupt.write_bytes(tiny_model_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable PFN checkpoint"):
        pfn.load(corrupt)
    payload = torch.load(tiny_model_path, weights_only=True)
    payload["format_version"] = 99
    newer = tmp_path / "newer.pfn"
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match="format version 99"):
        pfn.load(newer)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pfn")
    with pytest.raises(CheckpointError, match="not a PFN checkpoint"):
        pfn.load(tmp_path / "other.pfn")
    payload["format_version"] = 1
    payload["state_dict"] = {k: v[..., :1] for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "mismatch.pfn")
    with pytest.raises(CheckpointError, match="does not match"):
        pfn.load(tmp_path / "mismatch.pfn")


def test_cli_predict_writes_mean_and_quantiles(tmp_path, tiny_model_path, data):
    x, y, xq = data
    np.savetxt(tmp_path / "train.csv", np.column_stack([x, y]), delimiter=",")
    np.savetxt(tmp_path / "test.csv", xq, delimiter=",")
    main(
        [
            "predict",
            "--model",
            str(tiny_model_path),
            "--context",
            str(tmp_path / "train.csv"),
            "--query",
            str(tmp_path / "test.csv"),
            "--out",
            str(tmp_path / "out.csv"),
        ]
    )
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["mean", "std", "q0.05", "q0.5", "q0.95"]
    assert len(table) == 5
    assert (table["q0.05"] < table["q0.5"]).all() and (table["q0.5"] < table["q0.95"]).all()
    np.testing.assert_allclose(table["mean"], pfn.load(tiny_model_path).predict(x, y, xq).mean, rtol=1e-4)


def test_cli_predict_averages_an_ensemble_as_the_estimators_do(tmp_path, tiny_model_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 3, size=(15, 1))  # one feature: the views are the data and its mirror image
    y, xq = np.cos(2 * x[:, 0]), np.linspace(-1, 3, 6)[:, None]
    np.savetxt(tmp_path / "train.csv", np.column_stack([x, y]), delimiter=",")
    np.savetxt(tmp_path / "test.csv", xq, delimiter=",")
    files = ["--context", str(tmp_path / "train.csv"), "--query", str(tmp_path / "test.csv")]
    for size in (1, 2):
        main(["predict", "--model", "gp", *files, "--ensemble", str(size), "--out", str(tmp_path / f"{size}.csv")])
    single, pair = (pd.read_csv(tmp_path / f"{size}.csv") for size in (1, 2))
    assert list(pair.columns) == ["mean", "std", "q0.05", "q0.5", "q0.95"]
    estimator = PFNRegressor("gp", n_ensemble=2, random_state=0, device="cpu").fit(x, y)
    np.testing.assert_allclose(pair["mean"], estimator.predict(xq), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pair["q0.95"], estimator.predict_quantiles(xq, (0.95,))[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(pair["mean"], single["mean"], atol=1e-5)
    # A classifier: the context's labels, each with its averaged probability.
    labels = (x[:, 0] > 1).astype(float)
    np.savetxt(tmp_path / "labels.csv", np.column_stack([x, labels]), delimiter=",")
    files = ["--context", str(tmp_path / "labels.csv"), "--query", str(tmp_path / "test.csv")]
    main(["predict", "--model", "classifier", *files, "--ensemble", "3", "--out", str(tmp_path / "c.csv")])
    table = pd.read_csv(tmp_path / "c.csv")
    classifier = PFNClassifier("classifier", n_ensemble=3, random_state=0, device="cpu").fit(x, labels)
    assert list(table.columns) == ["label", "p0", "p1"]
    np.testing.assert_allclose(table[["p0", "p1"]], classifier.predict_proba(xq), atol=1e-6)
    np.testing.assert_array_equal(table["label"], classifier.predict(xq))
    with pytest.raises(SystemExit, match="--ensemble must be >= 1"):
        main(["predict", "--model", "gp", *files, "--ensemble", "0"])


def test_cli_predict_reads_headers_only_when_told(tmp_path, tiny_model_path, data):
    x, y, xq = data
    np.savetxt(tmp_path / "train.csv", np.column_stack([x, y]), delimiter=",", header="a,b,y", comments="")
    np.savetxt(tmp_path / "test.csv", xq, delimiter=",", header="a,b", comments="")
    files = ["--context", str(tmp_path / "train.csv"), "--query", str(tmp_path / "test.csv")]
    with pytest.raises(SystemExit, match="train.csv: not a numeric CSV table .*pass --header"):
        main(["predict", "--model", str(tiny_model_path), *files])
    main(["predict", "--model", str(tiny_model_path), *files, "--header", "--out", str(tmp_path / "out.csv")])
    assert len(pd.read_csv(tmp_path / "out.csv")) == len(xq)


def bench_gp(model_path, out_dir, *extra: str) -> None:
    args = ["--context", "0,4", "--features", "1,2", "--datasets", "8", "--queries", "3", "--out_dir", str(out_dir)]
    main(["bench", "gp", "--model", str(model_path), *args, *extra])


def test_cli_bench_writes_results(tmp_path, tiny_model_path, capsys):
    bench_gp(tiny_model_path, tmp_path)
    [result_file] = tmp_path.glob("gp-*.json")
    result = json.loads(result_file.read_text())
    assert [row["context"] for row in result["summary"]] == [0, 4]
    assert len(result["rows"]) == 4
    for row in result["rows"]:
        assert row["difference"] == pytest.approx(row["pfn_nll"] - row["gp_nll"])
        assert np.isfinite(row["pfn_nll"]) and row["gp_seconds_per_dataset"] > 0
        assert 0 < row["std_ratio"] < np.inf and 0 <= row["location_error"] < np.inf
    assert "| context |" in (tmp_path / result_file.with_suffix(".md").name).read_text()
    with pytest.raises(SystemExit, match="exceed the model's maximum"):
        main(["bench", "gp", "--model", str(tiny_model_path), "--features", "3", "--out_dir", str(tmp_path)])


def test_cli_bench_scores_a_symmetry_ensemble_on_the_same_datasets(tmp_path, tiny_model_path):
    bench_gp(tiny_model_path, tmp_path / "single")
    bench_gp(tiny_model_path, tmp_path / "ensemble", "--ensemble", "3")
    single, ensemble = (json.loads(next((tmp_path / d).glob("gp-*.json")).read_text()) for d in ("single", "ensemble"))
    assert ensemble["ensemble"] == 3
    for plain, row in zip(single["rows"], ensemble["rows"], strict=True):
        assert row["difference"] == pytest.approx(plain["difference"])  # the headline is still the single model
        assert np.isfinite(row["ensemble_difference"]) and row["ensemble_seconds_per_dataset"] > 0
    one_feature = [row for row in ensemble["rows"] if row["features"] == 1 and row["context"] == 4]
    # With one feature the views are the data and its mirror image: a different answer.
    assert one_feature[0]["ensemble_difference"] != pytest.approx(one_feature[0]["difference"], abs=1e-6)
    table = next((tmp_path / "ensemble").glob("gp-*.md")).read_text()
    header, rule = [line for line in table.splitlines() if line.startswith("|")][:2]
    assert "ensemble - GP" in header and header.count("|") == rule.count("|")


def test_cli_bench_in_bfloat16_scores_the_same_datasets(tmp_path, tiny_model_path):
    bench_gp(tiny_model_path, tmp_path)
    bench_gp(tiny_model_path, tmp_path, "--precision", "bfloat16", "--tag", "fast")
    [exact_file] = tmp_path.glob("gp-2*.json")
    [fast_file] = tmp_path.glob("gp-bfloat16-fast-*.json")  # its own files, next to the float32 ones
    assert fast_file.with_suffix(".md").exists()
    exact, fast = json.loads(exact_file.read_text()), json.loads(fast_file.read_text())
    assert (exact["pfn_precision"], fast["pfn_precision"]) == ("float32", "bfloat16")
    for row, fast_row in zip(exact["rows"], fast["rows"], strict=True):
        assert fast_row["gp_nll"] == row["gp_nll"]  # same held-out datasets
        assert fast_row["pfn_nll"] != row["pfn_nll"]  # the network really ran in bfloat16
        assert fast_row["pfn_nll"] == pytest.approx(row["pfn_nll"], abs=0.05)


@pytest.mark.parametrize("tag", ["../x", "v1.2"])  # a dot would cut the file name at `with_suffix`
def test_cli_bench_rejects_a_tag_that_is_no_file_name(tmp_path, tiny_model_path, tag):
    with pytest.raises(SystemExit, match=f"tag '{tag}' must be letters"):
        bench_gp(tiny_model_path, tmp_path, "--tag", tag)
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


def test_cli_train_rejects_a_typo(tmp_path):
    with pytest.raises(SystemExit, match="did you mean 'train.max_steps'"):
        main(["train", "--config", "configs/tiny.yaml", "--train.max_step", "3"])


def test_cli_export_turns_a_training_checkpoint_into_a_model(tmp_path, tiny_model_path, data):
    last = tiny_model_path.parent / "checkpoints" / "last.ckpt"
    main(["export", str(last), "--out", str(tmp_path / "exported.pfn")])
    x, y, xq = data
    exported = pfn.load(tmp_path / "exported.pfn").predict(x, y, xq)
    assert torch.allclose(exported.logits, pfn.load(tiny_model_path).predict(x, y, xq).logits)


def test_bfloat16_precision_predicts_nearly_the_same(tiny_model_path):
    exact, fast = pfn.load(tiny_model_path), pfn.load(tiny_model_path, precision="bfloat16")
    generator = torch.Generator().manual_seed(0)
    # Data like the prior's (a smooth function): `predict` maps pure noise onto a GP's units by a
    # huge outputscale, which would magnify any rounding back in the caller's units.
    x = torch.rand(4, 20, 2, generator=generator)
    y = torch.sin(3 * x.sum(-1)) + 0.01 * torch.randn(4, 20, generator=generator)
    reference = exact.predict(x[:, :12], y[:, :12], x[:, 12:])
    approximate = fast.predict(x[:, :12], y[:, :12], x[:, 12:])
    assert approximate.logits.dtype == torch.float32  # the distribution itself stays in float32
    assert not torch.equal(approximate.logits, reference.logits)  # bfloat16 did run
    assert torch.allclose(approximate.mean, reference.mean, atol=0.05)
    nll = [-d.log_prob(y[:, 12:]).mean().item() for d in (reference, approximate)]
    assert abs(nll[0] - nll[1]) < 0.02
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        pfn.load(tiny_model_path, precision="int8")


def test_bfloat16_weights_are_cast_once_and_predict_what_autocast_does(tiny_model_path):
    fast = pfn.load(tiny_model_path, precision="bfloat16")
    first_layer = fast.backbone.blocks[0].attention.query
    assert first_layer.weight.dtype == torch.bfloat16 and fast.backbone.decoder[0].weight.dtype == torch.bfloat16
    assert fast.backbone.x_encoder.weight.dtype == torch.float32  # the residual stream stays float32
    # With float32 weights under the same autocast, every product sees the same bfloat16 values.
    exact = pfn.load(tiny_model_path)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 15, 2, generator=generator), torch.randn(3, 15, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = exact.backbone(x[:, :10], y[:, :10], x[:, 10:])
        assert torch.equal(fast.backbone(x[:, :10], y[:, :10], x[:, 10:]), expected)


def test_cpu_chunking_of_a_large_batch_changes_nothing(model, monkeypatch):
    import pfn.predictor

    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 30, 2, generator=generator), torch.randn(40, 30, generator=generator)
    whole = model.predict(x[:, :20], y[:, :20], x[:, 20:])
    monkeypatch.setattr(pfn.predictor, "CPU_CHUNK_TOKENS", 31 * 7)  # chunks of 7 datasets, the last one short
    chunked = model.predict(x[:, :20], y[:, :20], x[:, 20:])
    assert chunked.batch_shape == whole.batch_shape == (40, 10)
    assert torch.allclose(chunked.logits, whole.logits, atol=1e-4)


def test_shipped_gp_in_the_users_units_predicts_nearly_as_in_the_priors():
    """`predict` maps data into the prior's units; on the prior's own datasets (which any units
    would give, the maps being affine-equivariant) that may lose little. Standardising y by the
    context and stretching its range over [0, 1], as before, lost 0.70 nats/point here; now 0.01."""
    model = pfn.load("gp")
    batch = model.prior.sample(100, 40, 2, torch.Generator().manual_seed(8))
    x_context, y_context, x_query, y_query = batch.x[:, :20], batch.y[:, :20], batch.x[:, 20:], batch.y[:, 20:]
    in_prior_units = -model.predict(x_context, y_context, x_query, normalize=False).log_prob(y_query).mean()
    mapped = -model.predict(x_context, y_context, x_query).log_prob(y_query).mean()
    assert mapped < in_prior_units + 0.1
