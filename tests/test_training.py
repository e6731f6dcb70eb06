"""Training: loss falls, resuming loses no steps, configs are checked, checkpoints round-trip."""

import hashlib

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import pfn
from pfn.checkpoint import read_checkpoint
from pfn.config import TrainConfig, load_config, resolve_speed
from pfn.distributions import RiemannMixture
from pfn.estimators import PFNRegressor
from pfn.heads import LocationScaleHead, readout_borders
from pfn.model import MAX_LOG_TEMPERATURE, TEMPERATURE_GAIN
from pfn.training import PFNModule, compile_backbone, draw_training_batch, next_stream, train
from priors import GPPrior, build_prior
from tests.conftest import ROOT, tiny_config


def held_out_nll(model: pfn.PFN) -> float:
    prior = build_prior(model.prior_spec)
    batch = prior.sample(64, 30, 2, torch.Generator().manual_seed(999))
    dist = model.predict(batch.x[:, :20], batch.y[:, :20], batch.x[:, 20:], normalize=False)
    return float(-dist.log_prob(batch.y[:, 20:]).mean())


def test_training_lowers_the_loss(tmp_path, tiny_model_path):
    untrained = train(tiny_config(tmp_path, "--train.max_steps", "1"))
    assert held_out_nll(pfn.load(tiny_model_path)) < held_out_nll(pfn.load(untrained)) - 0.3


def test_same_seed_same_batch():
    config = tiny_config(ROOT / "runs" / "unused")
    prior = build_prior(config.prior)
    a, b = draw_training_batch(prior, config, step=7), draw_training_batch(prior, config, step=7)
    c = draw_training_batch(prior, config, step=8)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and a["num_context"] == b["num_context"]
    assert not torch.equal(a["y"], c["y"])


class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_loses_no_steps(tmp_path):
    overrides = ("--train.max_steps", "8", "--train.checkpoint_every", "3")
    straight = pfn.load(train(tiny_config(tmp_path / "straight", *overrides)))

    crashed = tiny_config(tmp_path / "crashed", *overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[CrashAt(4)])  # the last checkpoint is at step 3
    resumed_path = train(crashed, ckpt_path="last")
    assert read_checkpoint(resumed_path)["metadata"]["trained_steps"] == 8
    resumed = pfn.load(resumed_path)
    for key, value in straight.backbone.state_dict().items():
        assert torch.allclose(value, resumed.backbone.state_dict()[key], atol=1e-6), key


class PoisonGradients(L.Callback):
    """Makes one step's gradients non-finite and keeps the weights before and after that step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.weights[trainer.global_step] = {k: v.clone() for k, v in module.state_dict().items()}

    def on_after_backward(self, trainer, module):
        if trainer.global_step == self.step:
            for index, parameter in enumerate(module.parameters()):
                parameter.grad.fill_(float("nan") if index % 2 else float("inf"))


def test_a_step_with_non_finite_gradients_changes_nothing(tmp_path):
    poison = PoisonGradients(step=3)
    model = pfn.load(train(tiny_config(tmp_path, "--train.max_steps", "6"), callbacks=[poison]))
    before, after = poison.weights[3], poison.weights[4]
    assert all(torch.equal(before[key], after[key]) for key in before)  # no update, no weight decay
    assert any(not torch.equal(after[key], poison.weights[5][key]) for key in after)  # the next step trains
    assert all(torch.isfinite(value).all() for value in model.backbone.state_dict().values())


def test_checkpoint_round_trip(tmp_path, tiny_model_path):
    model = pfn.load(tiny_model_path)
    payload = read_checkpoint(tiny_model_path)
    assert payload["format_version"] == 1 and payload["prior"]["name"] == "gp"
    assert payload["config"]["model"]["emsize"] == 32
    # How the steps ran (configs/tiny.yaml turns compiling off, so also on a GPU).
    assert model.metadata["speed"] == {"static_shapes": False, "compile": False, "compile_mode": "default"}
    # The exported weights give the same logits as the Lightning module they came from.
    module = PFNModule(payload["config"])
    module.backbone.load_state_dict(payload["state_dict"])
    module.head.load_state_dict(payload["head_state"])
    x = torch.rand(1, 5, 2)
    y = torch.randn(1, 5)
    with torch.no_grad():
        expected = module(x[:, :3], y[:, :3], x[:, 3:])
    dist = model.predict(x[:, :3], y[:, :3], x[:, 3:], normalize=False)
    assert torch.allclose(dist.logits, expected)
    assert torch.equal(model.head.borders, module.head.borders)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'model.emsiz'.*did you mean 'model.emsize'"):
        load_config(ROOT / "configs" / "tiny.yaml", ["--model.emsiz", "3"])
    with pytest.raises(ValueError, match="unknown config key 'trian'"):
        load_config(None, ["--trian.max_steps", "3"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown prior"):
        PFNModule(load_config(None, ["--prior.name", "nope"]).to_dict())
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        load_config(None, ["--imports", "[no_such_module]"])
    config = load_config(ROOT / "configs" / "gp.yaml", ["--model.emsize=64", "--prior.lengthscale", "0.3"])
    assert config.model.emsize == 64 and config.prior["lengthscale"] == 0.3


def test_auto_speed_options_compile_with_cuda_graphs_on_a_gpu_only(tmp_path):
    def speed(device_type: str, **options) -> tuple:
        resolved = resolve_speed(TrainConfig(**options), device_type)
        return resolved.compile, resolved.static_shapes, resolved.compile_mode

    assert speed("cuda") == (True, True, "reduce-overhead")
    assert speed("cpu") == (False, False, "default")
    assert speed("cpu", compile=True) == (True, True, "default")  # no CUDA graphs off a GPU
    assert speed("cpu", compile_mode="max-autotune") == (True, True, "max-autotune")  # a mode asked for compiles
    assert speed("cuda", static_shapes=False) == (True, False, "default")  # a CUDA graph needs one shape
    assert speed("cuda", compile=False) == (False, False, "default")
    # A step CUDA graphs cannot capture (a linear readout's batched Cholesky) compiles without them.
    assert resolve_speed(TrainConfig(), "cuda", cuda_graphs=False).compile_mode == "default"
    # A config keeps "auto" (the exported one too), so it means the same on the next machine;
    # the module trains the way its machine resolves it.
    config = load_config(None, ["--train.output_dir", str(tmp_path)])
    assert config.train.compile == "auto"
    assert PFNModule(config.to_dict()).speed.compile is torch.cuda.is_available()
    on_cpu = load_config(None, ["--train.accelerator", "cpu"])
    assert PFNModule(on_cpu.to_dict()).speed == resolve_speed(on_cpu.train, "cpu")


def test_config_values_are_type_checked():
    with pytest.raises(ValueError, match="'train.max_steps' must be an integer, got 'ten'"):
        load_config(None, ["--train.max_steps", "ten"])
    with pytest.raises(ValueError, match="'model.emsize' must be an integer, got 1.5"):
        load_config(None, ["--model.emsize", "1.5"])
    with pytest.raises(ValueError, match="train.compile must be true, false or auto, got 'maybe'"):
        load_config(None, ["--train.compile", "maybe"])
    # YAML 1.1 reads 1e-3 as a string; a float key takes it as the number it spells.
    assert load_config(None, ["--train.lr", "1e-3"]).train.lr == 0.001
    assert load_config(None, ["--data.max_context", "null"]).data.max_context is None
    with pytest.raises(ValueError, match="data.standardize_y .* needs model.head 'riemann'"):
        load_config(None, ["--data.standardize_y", "true", "--model.head", "categorical"])
    with pytest.raises(ValueError, match="train.export_dtype must be one of float32, float16"):
        load_config(None, ["--train.export_dtype", "bfloat16"])
    with pytest.raises(ValueError, match="data.stream must be >= 0, got -1"):
        load_config(None, ["--data.stream", "-1"])
    with pytest.raises(ValueError, match="train.compile_mode must be auto or one of default, reduce-overhead"):
        load_config(None, ["--train.compile_mode", "fast"])
    with pytest.raises(ValueError, match="train.compile_mode 'reduce-overhead' needs train.compile: true"):
        load_config(None, ["--train.compile_mode", "reduce-overhead", "--train.compile", "false"])
    with pytest.raises(ValueError, match="train.matmul_precision must be one of highest, high, medium, got 'tf32'"):
        load_config(None, ["--train.matmul_precision", "tf32"])
    with pytest.raises(ValueError, match=r"'train.trainable' must be a list of strings, e.g. \[a, b\], got 'backbone'"):
        load_config(None, ["--train.trainable", "backbone"])
    with pytest.raises(ValueError, match="'imports' must be a list of strings"):
        load_config(None, ["--imports", "priors.gp"])
    assert load_config(None, ["--train.trainable", "[backbone.decoder]"]).train.trainable == ["backbone.decoder"]


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "configs" / name)
    build_prior(config.prior)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_seed_same_batch_on_gpu():
    config = tiny_config(ROOT / "runs" / "unused")
    prior = build_prior(config.prior)
    a = draw_training_batch(prior, config, step=3, device="cuda")
    b = draw_training_batch(prior, config, step=3, device="cuda")
    assert a["x"].is_cuda and torch.equal(a["y"], b["y"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_sets_the_float32_matmul_precision(tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        train(
            tiny_config(
                tmp_path, "--train.accelerator", "gpu", "--train.max_steps", "2", "--train.precision", "32-true"
            )
        )
        assert torch.get_float32_matmul_precision() == "high"  # the config's default: TF32
    finally:
        torch.set_float32_matmul_precision(before)


def test_cpu_training_leaves_the_float32_matmul_precision_alone(tmp_path):
    before = torch.get_float32_matmul_precision()
    train(
        tiny_config(
            tmp_path, "--train.accelerator", "cpu", "--train.max_steps", "2", "--train.matmul_precision", "medium"
        )
    )
    assert torch.get_float32_matmul_precision() == before


def test_the_loss_is_logged_every_log_every_steps(tmp_path):
    # training_step calls `self.log` only on the steps the logger writes (Lightning's own rule).
    losses = []

    class RecordLosses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    config = tiny_config(tmp_path, "--logger", "csv", "--train.max_steps", "12", "--train.log_every", "5")
    train(config, callbacks=[RecordLosses()])
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().split()
    assert rows[0] == "epoch,step,train/loss"
    logged = {int(step): float(loss) for _, step, loss in (row.split(",") for row in rows[1:])}
    assert list(logged) == [4, 9]
    assert all(logged[step] == pytest.approx(losses[step]) for step in logged)  # that step's loss, not a stale one


def test_wandb_logger_works_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    path = train(tiny_config(tmp_path, "--logger", "wandb", "--train.max_steps", "3"))
    assert path.is_file()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_time_budget_sets_max_steps_to_fit_the_budget(tmp_path):
    import time

    start = time.perf_counter()
    path = train(tiny_config(tmp_path, "--train.max_minutes", "0.05", "--train.max_steps", "1000000"))
    seconds = time.perf_counter() - start
    checkpoint = read_checkpoint(path)
    trained = checkpoint["metadata"]["trained_steps"]
    # The budget (3 s) stops training long before a million steps, and the exported config
    # records the schedule's final length: the number of steps taken, unless the machine slowed
    # down after the last estimate and Lightning's `max_time` cut the last few (seen once, on
    # cores shared with two trainings: 24 of 25).
    assert 20 < trained < 1_000_000 and seconds < 60
    assert 0 <= checkpoint["config"]["train"]["max_steps"] - trained <= 0.1 * trained


def test_float16_export_halves_the_file_and_keeps_predictions(tmp_path, tiny_model_path):
    from pfn.checkpoint import save_model
    from pfn.training import PFNModule

    model = pfn.load(tiny_model_path)
    module = PFNModule(model.config.to_dict())
    module.backbone.load_state_dict(model.backbone.state_dict())
    module.head.load_state_dict(model.head.state_dict())
    half = pfn.load(save_model(module, tmp_path / "half.pfn", weights_dtype="float16"))
    assert (tmp_path / "half.pfn").stat().st_size < 0.6 * tiny_model_path.stat().st_size
    assert torch.equal(half.head.borders, model.head.borders)  # borders stay in full precision
    x = torch.rand(4, 12, 2)
    y = torch.randn(4, 12)
    full_mean = model.predict(x[:, :8], y[:, :8], x[:, 8:]).mean
    assert torch.allclose(half.predict(x[:, :8], y[:, :8], x[:, 8:]).mean, full_mean, atol=1e-2)
    with pytest.raises(ValueError, match="weights_dtype"):
        save_model(module, tmp_path / "bad.pfn", weights_dtype="int8")


def test_standardize_y_training_and_prediction_are_scale_equivariant(tmp_path):
    # A model trained on targets standardised by each context predicts in the caller's units:
    # shifting and scaling the context's y shifts and scales the predictive exactly, even with
    # normalize=False (the standardisation is part of the model).
    path = train(tiny_config(tmp_path, "--data.standardize_y", "true", "--train.max_steps", "20"))
    model = pfn.load(path)
    assert model.config.data.standardize_y
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 15, 2, generator=generator)
    y = torch.randn(4, 15, generator=generator)
    base = model.predict(x[:, :10], y[:, :10], x[:, 10:], normalize=False)
    moved = model.predict(x[:, :10], 100.0 * y[:, :10] - 7.0, x[:, 10:], normalize=False)
    assert torch.allclose(moved.mean, 100.0 * base.mean - 7.0, rtol=1e-4, atol=1e-3)
    assert torch.allclose(moved.icdf(0.9), 100.0 * base.icdf(0.9) - 7.0, rtol=1e-4, atol=1e-3)
    assert torch.isfinite(-base.log_prob(y[:, 10:])).all()


def test_init_from_starts_training_from_a_trained_model(tmp_path, tiny_model_path):
    source = pfn.load(tiny_model_path)

    def one_negligible_step(name: str, *overrides: str) -> pfn.PFN:
        """Start from the tiny model and take one step at a learning rate that moves nothing."""
        init = ("--train.init_from", str(tiny_model_path), "--train.max_steps", "1", "--train.lr", "1e-12")
        return pfn.load(train(tiny_config(tmp_path / name, *init, *overrides)))

    # Fine-tuning on another prior keeps the model's own borders (its output layer learned them).
    tuned = one_negligible_step("same", "--prior.lengthscale", "0.2")
    assert torch.equal(tuned.head.borders, source.head.borders)
    for key, value in source.backbone.state_dict().items():
        assert torch.allclose(tuned.backbone.state_dict()[key], value, atol=1e-6), key
    assert tuned.metadata["initialized_from"]["trained_steps"] == source.metadata["trained_steps"]
    assert tuned.metadata["initialized_from"]["sha256"] == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    # The file counts only its own run's steps; its card says so rather than pass them off as the whole.
    assert "in its last run" in str(pfn.model_card(tmp_path / "same" / "model.pfn"))
    assert "in its last run" not in str(pfn.model_card(tiny_model_path))

    # Another number of buckets: new borders, and an output layer rebuilt to give the model's own
    # predictive on them, so the NLL is where it was (here 50 -> 200 buckets).
    rebucketed = one_negligible_step("buckets", "--model.num_buckets", "200")
    assert rebucketed.head.borders.shape == (201,)
    resized = rebucketed.metadata["initialized_from"]["rebucketed"]
    assert resized and all(key.startswith("decoder.") for key in resized)
    first_layer = "blocks.0.attention.query.weight"
    assert torch.allclose(rebucketed.backbone.state_dict()[first_layer], source.backbone.state_dict()[first_layer])
    batch = GPPrior().sample(64, 20, 2, torch.Generator().manual_seed(5))
    x_context, y_context, x_query, y_query = batch.x[:, :12], batch.y[:, :12], batch.x[:, 12:], batch.y[:, 12:]
    nll = [
        -model.predict(x_context, y_context, x_query, normalize=False).log_prob(y_query).mean().item()
        for model in (source, rebucketed)
    ]
    assert nll[1] == pytest.approx(nll[0], abs=0.03)


def test_trainable_trains_only_the_named_parts(tmp_path, tiny_model_path):
    source = pfn.load(tiny_model_path).backbone.state_dict()
    overrides = ("--train.init_from", str(tiny_model_path), "--train.max_steps", "3", "--train.lr", "1e-2")
    tuned = pfn.load(train(tiny_config(tmp_path / "decoder", *overrides, "--train.trainable", "[backbone.decoder]")))
    for key, value in tuned.backbone.state_dict().items():
        changed = not torch.equal(value, source[key].to(value.dtype))
        assert changed == key.startswith("decoder."), key
    with pytest.raises(
        ValueError, match=r"train.trainable: no parameter is named \['backbone.decoderr'\].*backbone.blocks"
    ):
        train(tiny_config(tmp_path / "typo", *overrides, "--train.trainable", "[backbone.decoderr]"))


def test_init_from_trains_on_new_datasets(tmp_path, tiny_model_path):
    source = pfn.load(tiny_model_path)
    config = tiny_config(tmp_path / "next", "--train.init_from", str(tiny_model_path), "--train.max_steps", "1")
    moved = next_stream(config, source.config)
    assert (source.config.data.stream, moved.data.stream, config.data.stream) == (0, 1, 0)
    assert not torch.equal(draw_training_batch(build_prior(config.prior), config, 0)["y"],
                           draw_training_batch(build_prior(config.prior), moved, 0)["y"])  # fmt: skip
    again = next_stream(moved, moved)  # a continuation of the continuation moves on again
    assert again.data.stream == 2
    assert next_stream(tiny_config(tmp_path / "s", "--seed", "7"), source.config).data.stream == 0  # other seed
    # Through `train`: the exported config records the stream, so `pfn train` with it reproduces the run.
    continued = pfn.load(train(config))
    assert continued.config.data.stream == 1


def test_init_from_refuses_another_architecture(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match=r"model\.emsize \(32 there, 48 here\)"):
        train(tiny_config(tmp_path / "a", "--train.init_from", str(tiny_model_path), "--model.emsize", "48"))
    with pytest.raises(ValueError, match="standardize_y"):
        train(tiny_config(tmp_path / "b", "--train.init_from", str(tiny_model_path), "--data.standardize_y", "true"))
    with pytest.raises(FileNotFoundError, match="no checkpoint file or shipped model"):
        train(tiny_config(tmp_path / "c", "--train.init_from", "no-such-model"))


def test_init_from_can_gain_a_learned_temperature(tmp_path, tiny_model_path):
    source = pfn.load(tiny_model_path)
    init = ("--train.init_from", str(tiny_model_path), "--train.max_steps", "1", "--train.lr", "1e-12")
    gained = pfn.load(train(tiny_config(tmp_path / "t", *init, "--model.learned_temperature", "true")))
    assert gained.config.model.learned_temperature and "log_temperature.weight" in gained.backbone.state_dict()
    batch = GPPrior().sample(8, 20, 2, torch.Generator().manual_seed(5))
    x_context, y_context, x_query = batch.x[:, :12], batch.y[:, :12], batch.x[:, 12:]
    with torch.no_grad():
        before = source.backbone(x_context, y_context, x_query)
        assert torch.allclose(gained.backbone(x_context, y_context, x_query), before, atol=1e-5)
        # The temperature scales all logits of a query: inverse temperature 2 (its log is bounded
        # by MAX tanh(gain raw / MAX)) doubles them.
        raw = MAX_LOG_TEMPERATURE * torch.atanh(torch.tensor(2.0).log() / MAX_LOG_TEMPERATURE) / TEMPERATURE_GAIN
        gained.backbone.log_temperature.bias.fill_(raw.item())
        assert torch.allclose(gained.backbone(x_context, y_context, x_query), 2 * before, atol=1e-4)
    # Dropping it again would throw a trained layer away: refused like any other change.
    with pytest.raises(ValueError, match=r"model\.learned_temperature \(True there, False here\)"):
        train(tiny_config(tmp_path / "u", "--train.init_from", str(gained.path), "--train.max_steps", "1"))
    with pytest.raises(ValueError, match="learned_temperature sharpens a bar distribution"):
        tiny_config(tmp_path / "v", "--model.head", "categorical", "--model.learned_temperature", "true")


def test_mlp_x_encoder_travels_through_the_checkpoint(tmp_path, tiny_model_path):
    model = pfn.load(train(tiny_config(tmp_path / "m", "--model.x_encoder", "mlp", "--train.max_steps", "2")))
    assert model.config.model.x_encoder == "mlp" and isinstance(model.backbone.x_encoder, torch.nn.Sequential)
    rng = torch.Generator().manual_seed(0)
    x_context, y_context = torch.rand(6, 2, generator=rng), torch.randn(6, generator=rng)
    x_query = torch.rand(4, 2, generator=rng)
    assert torch.isfinite(model.predict(x_context, y_context, x_query).mean).all()
    # Changing the encoder would throw trained weights away: init_from refuses it.
    with pytest.raises(ValueError, match=r"model\.x_encoder \('linear' there, 'mlp' here\)"):
        train(tiny_config(tmp_path / "n", "--train.init_from", str(tiny_model_path), "--model.x_encoder", "mlp"))
    with pytest.raises(ValueError, match="model.x_encoder must be one of linear, mlp, got 'MLP'"):
        tiny_config(tmp_path / "o", "--model.x_encoder", "MLP")


def test_linear_readout_trains_and_round_trips(tmp_path):
    config = ("--model.linear_readout", "16", "--data.standardize_y", "true")
    untrained = pfn.load(train(tiny_config(tmp_path / "u", *config, "--train.max_steps", "1")))
    model = pfn.load(train(tiny_config(tmp_path / "t", *config)))
    assert isinstance(model.head, LocationScaleHead)
    assert torch.equal(model.head.borders, readout_borders(model.config.model.num_buckets))
    assert held_out_nll(model) < held_out_nll(untrained) - 0.3
    # In the caller's units: the predictive moves with y's units, its buckets placed per query.
    rng = torch.Generator().manual_seed(0)
    x_context, y_context, x_query = torch.rand(12, 2, generator=rng), torch.randn(12, generator=rng), torch.rand(5, 2)
    dist = model.predict(x_context, y_context, x_query)
    assert dist.borders.shape == (5, model.config.model.num_buckets + 1)
    moved = model.predict(x_context, 100 * y_context + 7, x_query)
    # rtol 1e-3: this briefly trained readout's float64 solve is nearly singular, so it magnifies
    # the float32 rounding of the standardised y (y * (1 + 3e-7) moves its medians by up to 6e-5,
    # 100 y + 7 by 3.6e-4 relative on an AVX2 CPU); a units error would be off by 100x.
    torch.testing.assert_close(moved.median, 100 * dist.median + 7, atol=1e-3, rtol=1e-3)
    # The sklearn-style estimator keeps each query's own buckets, and mixes an ensemble's members exactly.
    regressor = PFNRegressor(model=str(model.path), chunk_size=2).fit(x_context.numpy(), y_context.numpy())
    estimated = regressor.predict_distribution(x_query.numpy()).median
    torch.testing.assert_close(estimated, dist.median, atol=1e-4, rtol=1e-4)
    ensemble = PFNRegressor(model=str(model.path), n_ensemble=2, random_state=0)
    ensemble.fit(x_context.numpy(), y_context.numpy())
    assert isinstance(ensemble.predict_distribution(x_query.numpy()), RiemannMixture)
    # Heavier readout tails through init_from: Student-t buckets, and an output layer rebuilt to
    # give the model's own predictive on them within the old borders. Beyond them the floored
    # shares of the new buckets (`REBUCKET_MIN_SHARE`) can only lower the NLL of far targets.
    init = ("--train.init_from", str(model.path), "--train.max_steps", "1", "--train.lr", "1e-12")
    # (Finer new buckets, which split the old ones nearly evenly: a new bucket straddling an old
    # border gets an approximate share.)
    heavy = ("--model.readout_tail_dof", "3", "--model.num_buckets", "500")
    heavier = pfn.load(train(tiny_config(tmp_path / "h", *config, *init, *heavy)))
    assert torch.equal(heavier.head.borders, readout_borders(500, 3.0))
    assert heavier.head.borders[-1] > model.head.borders[-1] + 7  # 10.2 against 2.3
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])[:, None]
    rebucketed = heavier.predict(x_context, y_context, x_query).icdf(levels)
    torch.testing.assert_close(rebucketed, dist.icdf(levels), atol=0.02, rtol=0)  # y ~ N(0, 1)
    assert held_out_nll(heavier) < held_out_nll(model) + 1e-3
    # Gaining per-dataset input scales: they start at 1, so the predictive is unchanged.
    scaled = pfn.load(train(tiny_config(tmp_path / "s", *config, *init, "--model.readout_input_scale", "true")))
    assert scaled.backbone.linear_readout.log_input_scale is not None
    torch.testing.assert_close(scaled.predict(x_context, y_context, x_query).icdf(levels), dist.icdf(levels))
    with pytest.raises(ValueError, match="readout_input_scale scales the linear readout's inputs"):
        tiny_config(tmp_path / "d", "--model.readout_input_scale", "true")
    with pytest.raises(ValueError, match="readout_tail_dof places the linear readout's z buckets"):
        tiny_config(tmp_path / "d", "--model.readout_tail_dof", "3")
    with pytest.raises(ValueError, match="degrees of freedom > 0, got -1"):
        tiny_config(tmp_path / "d", *config, "--model.readout_tail_dof", "-1")
    with pytest.raises(ValueError, match="linear_readout must be >= 0"):
        tiny_config(tmp_path / "n", "--model.linear_readout", "-1")
    with pytest.raises(ValueError, match="linear_readout places a regression predictive"):
        categorical = ("--prior", "{name: gmm}", "--model.head", "categorical")
        tiny_config(tmp_path / "c", "--model.linear_readout", "4", *categorical)
    with pytest.raises(ValueError, match="readout_evidence fits the linear readout's precisions"):
        tiny_config(tmp_path / "e", "--model.readout_evidence", "true")
    with pytest.raises(ValueError, match="linear_readout cannot run in a CUDA graph"):
        tiny_config(tmp_path / "g", "--model.linear_readout", "4", "--train.compile_mode", "reduce-overhead")


@pytest.mark.parametrize("evidence", [False, True])
def test_init_from_can_gain_a_linear_readout(tmp_path, tiny_model_path, evidence):
    source = pfn.load(tiny_model_path)
    init = ("--train.init_from", str(tiny_model_path), "--train.max_steps", "1", "--train.lr", "1e-12")
    readout = ("--model.linear_readout", "8", "--model.readout_evidence", str(evidence).lower())
    gained = pfn.load(train(tiny_config(tmp_path / "r", *init, *readout)))
    theirs, ours = source.backbone.state_dict(), gained.backbone.state_dict()
    assert torch.allclose(ours["blocks.0.attention.query.weight"], theirs["blocks.0.attention.query.weight"])
    # The output layer starts afresh on the head's standard-normal buckets: z uniform over them,
    # so the predictive starts as the readout's own Gaussian (its median at loc).
    assert not ours["decoder.2.weight"].abs().max() > 1e-6
    assert torch.equal(gained.head.borders, readout_borders(gained.config.model.num_buckets))
    batch = GPPrior().sample(4, 20, 2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        outputs = gained.backbone(batch.x[:, :12], batch.y[:, :12], batch.x[:, 12:])
    torch.testing.assert_close(gained.head.distribution(outputs).median, outputs[..., -2], atol=1e-4, rtol=1e-4)


def test_init_from_can_grow_a_linear_readout(tmp_path):
    readout = ("--model.linear_readout", "8", "--model.readout_evidence", "true", "--data.standardize_y", "true")
    source_path = train(tiny_config(tmp_path / "s", *readout, "--train.max_steps", "3"))
    init = ("--train.init_from", str(source_path), "--train.max_steps", "1", "--train.lr", "1e-12")
    grown = pfn.load(train(tiny_config(tmp_path / "g", *readout, "--model.linear_readout", "16", *init)))
    source = pfn.load(source_path)
    key = "linear_readout.basis.3.weight"
    theirs, ours = source.backbone.state_dict()[key], grown.backbone.state_dict()[key]
    assert ours.shape == (16, theirs.shape[1])
    torch.testing.assert_close(ours[:8], theirs)
    assert (ours[8:] != 0).any() and ours[8:].abs().max() < 1e-3 * theirs.abs().max()
    # The new basis functions are all but invisible: the same predictions to start with.
    batch = GPPrior().sample(4, 20, 2, torch.Generator().manual_seed(5))
    data = batch.x[:, :12], batch.y[:, :12], batch.x[:, 12:]
    before, after = source.predict(*data, normalize=False), grown.predict(*data, normalize=False)
    torch.testing.assert_close(after.median, before.median, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(after.stddev, before.stddev, atol=1e-3, rtol=1e-2)
    # Fewer basis functions would drop trained ones: refused.
    shrink = ("--model.linear_readout", "4", "--train.init_from", str(source_path))
    with pytest.raises(ValueError, match="another architecture: model.linear_readout"):
        train(tiny_config(tmp_path / "x", *readout, *shrink, "--train.max_steps", "1"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--model.learned_temperature", "true"],
        ["--data.standardize_y", "true"],
        ["--prior", "{name: gmm}", "--model.head", "categorical"],
        ["--model.linear_readout", "8", "--data.standardize_y", "true"],
        ["--model.linear_readout", "8", "--model.readout_evidence", "true", "--data.standardize_y", "true"],
        ["--model.linear_readout", "8", "--model.readout_input_scale", "true", "--data.standardize_y", "true"],
    ],
)
def test_static_shapes_give_the_same_loss_and_gradients(tmp_path, extra):
    config = tiny_config(tmp_path, *extra)
    module = PFNModule(config.to_dict())
    module.setup("fit")
    static = PFNModule(tiny_config(tmp_path, *extra, "--train.static_shapes", "true").to_dict())
    static.load_state_dict(module.state_dict())
    if config.model.learned_temperature:  # away from zero, so the temperature takes part
        torch.nn.init.normal_(module.backbone.log_temperature.weight, std=0.1)
        static.load_state_dict(module.state_dict())
    if config.model.readout_input_scale:  # away from one, so the scales take part
        torch.nn.init.normal_(module.backbone.linear_readout.log_input_scale.weight, std=0.01)
        static.load_state_dict(module.state_dict())
    # The evidence's posterior moves with the float32 rounding of the features, which differs
    # between the two shapes (on nearly noiseless data, by ~1e-3 in log alpha / beta), and a
    # scale that moves by that much moves some z across a bucket border: there the loss and the
    # gradient as a whole are compared.
    evidence = config.model.readout_evidence
    shapes = set()
    for step in range(4):  # batches of different context and feature counts
        batch = draw_training_batch(module.prior, config, step)
        shapes.add((batch["num_context"], batch["x"].shape[-1]))
        module.zero_grad(), static.zero_grad()
        loss, static_loss = module.loss(batch), static.loss(batch)
        loss.backward(), static_loss.backward()
        assert torch.allclose(loss, static_loss, atol=1e-3 if evidence else 1e-5, rtol=1e-4 if evidence else 1e-5)
        if evidence:
            gradient, static_gradient = (
                torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (module, static)
            )
            assert F.cosine_similarity(gradient, static_gradient, dim=0) > 0.999
            continue
        for (name, a), b in zip(module.named_parameters(), static.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    assert len(shapes) > 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("extra", [[], ["--model.linear_readout", "8", "--data.standardize_y", "true"]])
def test_gpu_cuda_graph_training_takes_the_steps_eager_training_does(tmp_path, monkeypatch, extra):
    # The default on a CUDA GPU (train.compile etc. "auto"): the backbone compiled at static shapes
    # and replayed as a CUDA graph (compiled without one for a linear readout). Same initial
    # weights, same batches, float32: the same losses step by step, and the same updates.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    losses, updates = {}, {}
    for compiled in (False, True):
        speed = ("--train.compile", "auto", "--train.static_shapes", "auto", "--train.compile_mode", "auto")
        eager = ("--train.compile", "false", "--train.static_shapes", "true")
        config = tiny_config(tmp_path, *(speed if compiled else eager), *extra)
        torch.manual_seed(0)
        module = PFNModule(config.to_dict())
        module.setup("fit")
        module.cuda()
        initial = [p.detach().clone() for p in module.parameters()]
        if compiled:
            # A linear readout's solves are not capturable: "auto" compiles it without CUDA graphs.
            assert module.speed.compile_mode == ("default" if extra else "reduce-overhead")
            compile_backbone(module)
        optimizer = module.configure_optimizers()["optimizer"]
        losses[compiled] = []
        for step in range(8):
            loss = module.loss(draw_training_batch(module.prior, config, step, 0, "cuda"))
            loss.backward()
            module.on_before_optimizer_step(optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[compiled].append(loss.item())
        updates[compiled] = torch.cat(
            [(p.detach() - p0).flatten() for p, p0 in zip(module.parameters(), initial, strict=True)]
        )
    assert updates[False].norm() > 1e-2  # the optimizer stepped
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-3)
    # The same updates (up to float32 reordering; Adam's first steps amplify it where gradients are ~0).
    assert (updates[True] - updates[False]).norm() < 0.02 * updates[False].norm()
