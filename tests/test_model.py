"""The transformer's attention pattern: queries see only the context, the context is a set."""

import math

import pytest
import torch

from pfn.distributions import RiemannDistribution
from pfn.model import BayesianLinearReadout, ContextAttention, PFNTransformer, evidence_precisions, pad_features


@pytest.fixture
def model() -> PFNTransformer:
    torch.manual_seed(0)
    return PFNTransformer(max_features=3, num_outputs=7, emsize=32, nlayers=2, nhead=4, nhid=64).eval()


def inputs(seed=0, batch=2, context=6, queries=5, features=2):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, context, features, generator=g),
        torch.randn(batch, context, generator=g),
        torch.rand(batch, queries, features, generator=g),
    )


def test_changing_one_query_leaves_the_others_unchanged(model):
    x_context, y_context, x_query = inputs()
    before = model(x_context, y_context, x_query)
    changed = x_query.clone()
    changed[:, 2] = 0.123
    after = model(x_context, y_context, changed)
    others = [0, 1, 3, 4]
    assert torch.allclose(before[:, others], after[:, others], atol=1e-6)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-4)
    # Predicting a query alone gives the same answer as predicting it among others.
    alone = model(x_context, y_context, x_query[:, 3:4])
    assert torch.allclose(alone[:, 0], before[:, 3], atol=1e-6)


def test_permuting_the_context_leaves_predictions_unchanged(model):
    x_context, y_context, x_query = inputs()
    order = torch.randperm(x_context.shape[1], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(
        model(x_context, y_context, x_query), model(x_context[:, order], y_context[:, order], x_query), atol=1e-5
    )


def test_context_changes_predictions_and_empty_context_is_valid(model):
    x_context, y_context, x_query = inputs()
    with_data = model(x_context, y_context, x_query)
    assert not torch.allclose(with_data, model(x_context, y_context + 1.0, x_query), atol=1e-4)
    empty = model(x_context[:, :0], y_context[:, :0], x_query)
    assert empty.shape == (2, 5, 7) and torch.isfinite(empty).all()


def test_fewer_features_are_padded_and_too_many_rejected(model):
    x_context, y_context, x_query = inputs(features=1)
    assert model(x_context, y_context, x_query).shape == (2, 5, 7)
    x_context, y_context, x_query = inputs(features=4)
    with pytest.raises(ValueError, match="at most 3"):
        model(x_context, y_context, x_query)


def test_rebucketed_output_layer_gives_the_same_distribution():
    from pfn.heads import rebucket_output_layer

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 10)
    old_borders = torch.linspace(-3.0, 3.0, 11)
    new_borders = torch.linspace(-3.0, 3.0, 41)  # every old bucket split in four
    weight, bias = rebucket_output_layer(layer, old_borders, new_borders)
    hidden = torch.randn(5, 8)
    old = RiemannDistribution(layer(hidden).detach(), old_borders)
    new = RiemannDistribution(hidden @ weight.T + bias, new_borders)
    points = torch.linspace(-2.4, 2.4, 49)[:, None]  # beyond them the two tails have other shapes
    assert torch.allclose(new.cdf(points), old.cdf(points), atol=1e-5)


def test_readout_borders_hold_equal_mass_and_reach_further_with_heavier_tails():
    import scipy.stats

    from pfn.heads import readout_borders

    normal, heavy = readout_borders(1000), readout_borders(1000, tail_dof=3.0)
    assert normal.shape == heavy.shape == (1001,)
    for borders, cdf in ((normal, scipy.stats.norm.cdf), (heavy, lambda z: scipy.stats.t.cdf(z, 3.0))):
        mass = torch.diff(torch.from_numpy(cdf(borders.double().numpy())))
        assert torch.allclose(mass, torch.full_like(mass, 0.999 / 1000), rtol=1e-3)
        assert torch.allclose(borders, -borders.flip(0), atol=1e-5)  # symmetric about z = 0
    assert normal[-1] == pytest.approx(3.29, abs=0.01)  # the normal's 0.9995 quantile
    assert heavy[-1] == pytest.approx(12.92, abs=0.01)  # Student-t(3)'s
    # Many degrees of freedom: the normal's buckets again.
    assert torch.allclose(readout_borders(1000, tail_dof=1e6), normal, atol=1e-3)


def test_readout_input_scale_multiplies_x_per_dataset_and_feature():
    torch.manual_seed(0)
    plain = BayesianLinearReadout(max_features=3, emsize=16, num_basis=8)
    scaled = BayesianLinearReadout(max_features=3, emsize=16, num_basis=8, input_scale=True)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    x, summary = torch.rand(2, 5, 3), torch.randn(2, 16)
    torch.testing.assert_close(scaled.features(x, summary), plain.features(x, summary))  # scales start at 1
    with torch.no_grad():
        scaled.log_input_scale.bias.copy_(torch.tensor([0.1, -0.05, 0.0]))  # x READOUT_GAIN: 1, -0.5, 0
    log_scale = 4 * torch.tanh(torch.tensor([1.0, -0.5, 0.0]) / 4)  # softly bounded by MAX_LOG_INPUT_SCALE
    expected = plain.features(x * log_scale.exp(), summary)
    torch.testing.assert_close(scaled.features(x, summary), expected)


@pytest.mark.parametrize("num_context", [0, 1, 4, 6])
@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_static_shape_forward_predicts_what_forward_does(num_context, kind):
    # train.static_shapes: every point in one tensor, the context marked by a mask over the keys.
    torch.manual_seed(0)
    classes = 4 if kind == "classification" else None
    model = PFNTransformer(
        max_features=3, num_outputs=7, emsize=32, nlayers=2, nhead=4, nhid=64,
        num_classes=classes, learned_temperature=classes is None,
    ).eval()  # fmt: skip
    if model.log_temperature is not None:  # away from zero, so the temperature takes part
        torch.nn.init.normal_(model.log_temperature.weight, std=0.1)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 9, 2, generator=g)
    y = torch.randint(0, 4, (2, 9), generator=g).float() if classes else torch.randn(2, 9, generator=g)
    expected = model(x[:, :num_context], y[:, :num_context], x[:, num_context:])
    is_context = torch.arange(9) < num_context
    static = model.forward_static(pad_features(x, 3), y, is_context)
    assert static.shape == (2, 9, 7)
    assert torch.allclose(static[:, num_context:], expected, atol=1e-5)
    # The query points' own targets are never seen.
    changed = y.clone()
    changed[:, num_context:] = changed[:, num_context:].flip(-1) + (0 if classes else 5.0)
    assert torch.allclose(model.forward_static(pad_features(x, 3), changed, is_context), static, atol=1e-6)


def test_bfloat16_training_on_a_cpu_runs_attention_in_float32(model, monkeypatch):
    # The CPU attention kernel's backward is several times slower in bfloat16 (see ContextAttention).
    seen = []
    attend = ContextAttention.attend

    def recording(self, q, k, v, mask):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return attend(self, q, k, v, mask)

    monkeypatch.setattr(ContextAttention, "attend", recording)
    x_context, y_context, x_query = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(x_context, y_context, x_query)
    out.float().sum().backward()
    assert seen == [(torch.float32, False)] * 2  # two layers
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference keeps bfloat16
        model.eval()(x_context, y_context, x_query)
    assert seen == [(torch.bfloat16, True)] * 2


def test_bfloat16_cpu_inference_attention_agrees_with_the_fused_kernel(monkeypatch):
    # bfloat16 inference on a CPU takes plain operations (faster there); large scores the fused kernel.
    import pfn.model

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (9, 7, 7))
    attention = ContextAttention(64, 4, 0.0).eval()
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    plain = attention.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    monkeypatch.setattr(pfn.model, "MAX_PLAIN_ATTENTION_SCORES", 2 * 4 * 9 * 7 - 1)
    fused = attention.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert plain.dtype == fused.dtype == torch.bfloat16 and not torch.equal(plain, fused)
    for result in (plain, fused):
        torch.testing.assert_close(result.float(), expected, atol=0.03, rtol=0.03)


@pytest.mark.parametrize("static", [False, True])
def test_bfloat16_autocast_keeps_inputs_and_the_residual_stream_in_float32(model, static):
    # Targets 0.003 apart are one value in bfloat16 (its steps are 0.0078 at 1.0); the model must
    # still tell them apart, or its sharpest predictions are lost (see PFNTransformer.encode_x).
    x_context, y_context, x_query = inputs()
    nudged = y_context.clone()
    nudged[:, 0] = 1.0 + 0.003
    y_context[:, 0] = 1.0
    assert torch.equal(nudged.bfloat16(), y_context.bfloat16())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode_y(y_context).dtype == model.encode_x(x_context).dtype == torch.float32
        if static:
            x, is_context = torch.cat([x_context, x_query], 1), torch.arange(11) < 6
            pad = torch.zeros(2, 5)
            logits = [
                model.forward_static(pad_features(x, 3), torch.cat([y, pad], 1), is_context)
                for y in (y_context, nudged)
            ]
        else:
            logits = [model(x_context, y, x_query) for y in (y_context, nudged)]
    assert not torch.equal(logits[0], logits[1])


@pytest.fixture
def readout_model() -> PFNTransformer:
    torch.manual_seed(0)
    return PFNTransformer(
        max_features=3, num_outputs=7, emsize=32, nlayers=2, nhead=4, nhid=64, linear_readout=16
    ).eval()


def test_linear_readout_is_the_bayesian_linear_regression_posterior(readout_model):
    """loc and scale are the closed-form Bayesian linear regression predictive on the readout's features."""
    readout = readout_model.linear_readout
    x_context, y_context, x_query = inputs(features=3)
    summary = torch.randn(2, 32)
    with torch.no_grad():
        # Away from the initial values, so that alpha and beta both matter.
        readout.log_precisions.bias.copy_(torch.tensor([0.07, 0.9]))
        loc, log_scale = readout(summary, x_context, y_context, x_query)
        normed = readout.norm(summary)
        phi_context = readout.features(x_context, normed).double()
        phi_query = readout.features(x_query, normed).double()
        log_alpha, log_beta = (10 * readout.log_precisions(normed)).double().unbind(-1)
        alpha, beta = (10 * torch.tanh(log_alpha / 10)).exp(), (25 * torch.tanh(log_beta / 25)).exp()
    for b in range(2):
        precision = alpha[b] * torch.eye(16, dtype=torch.float64) + beta[b] * phi_context[b].T @ phi_context[b]
        covariance = torch.linalg.inv(precision)
        mean = beta[b] * phi_query[b] @ covariance @ phi_context[b].T @ y_context[b].double()
        variance = 1 / beta[b] + ((phi_query[b] @ covariance) * phi_query[b]).sum(-1)
        torch.testing.assert_close(loc[b].double(), mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(log_scale[b].double(), 0.5 * variance.log(), atol=1e-5, rtol=1e-5)


def test_linear_readout_keeps_the_attention_pattern(readout_model):
    """With the readout, too: queries are independent, the context is a set, y moves the location
    linearly when the summary is held, and an empty context is the prior predictive."""
    x_context, y_context, x_query = inputs()
    before = readout_model(x_context, y_context, x_query)  # [b, q, 7 + 2]
    assert before.shape == (2, 5, 9)
    changed = x_query.clone()
    changed[:, 2] = 0.123
    after = readout_model(x_context, y_context, changed)
    assert torch.allclose(before[:, [0, 1, 3, 4]], after[:, [0, 1, 3, 4]], atol=1e-6)
    assert not torch.allclose(before[:, 2, -2:], after[:, 2, -2:], atol=1e-4)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    permuted = readout_model(x_context[:, order], y_context[:, order], x_query)
    assert torch.allclose(before, permuted, atol=1e-5)
    empty = readout_model(x_context[:, :0], y_context[:, :0], x_query)
    assert torch.isfinite(empty).all() and torch.equal(empty[..., -2], torch.zeros(2, 5))
    padded = [pad_features(x, 3) for x in (x_context, x_query)]
    summary = torch.randn(2, 32)
    loc_1, _ = readout_model.linear_readout(summary, padded[0], y_context, padded[1])
    loc_3, _ = readout_model.linear_readout(summary, padded[0], 3 * y_context, padded[1])
    torch.testing.assert_close(loc_3, 3 * loc_1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("evidence", [False, True])
def test_linear_readout_static_shapes_match(evidence):
    torch.manual_seed(0)
    model = PFNTransformer(3, 7, emsize=32, nlayers=2, nhead=4, nhid=64, linear_readout=16, readout_evidence=evidence)
    x_context, y_context, x_query = inputs()
    x, y = torch.cat([x_context, x_query], 1), torch.cat([y_context, torch.randn(2, 5)], 1)
    with torch.no_grad():
        static = model.forward_static(pad_features(x, 3), y, torch.arange(11) < 6)[:, 6:]
        dynamic = model(x_context, y_context, x_query)
    torch.testing.assert_close(static, dynamic, atol=1e-5, rtol=1e-5)


def marginal_log_likelihood(phi: torch.Tensor, y: torch.Tensor, log_ratio: float, log_beta: float) -> float:
    """log N(y; 0, Phi Phi^T / alpha + I / beta): the Bayesian linear regression's evidence, directly."""
    beta = math.exp(log_beta)
    covariance = phi @ phi.T / (math.exp(log_ratio) * beta) + torch.eye(len(y), dtype=phi.dtype) / beta
    return torch.distributions.MultivariateNormal(torch.zeros_like(y), covariance).log_prob(y).item()


@pytest.mark.parametrize(("points", "basis", "noise"), [(30, 5, 0.1), (50, 10, 1e-3), (40, 10, 1.0), (8, 16, 0.01)])
def test_evidence_precisions_follow_the_marginal_likelihood(points, basis, noise):
    generator = torch.Generator().manual_seed(points)
    phi = torch.randn(points, basis, dtype=torch.float64, generator=generator)
    y = phi @ torch.randn(basis, dtype=torch.float64, generator=generator)
    y = y + noise * torch.randn(points, dtype=torch.float64, generator=generator)
    log_ratio, log_beta, spread = (value.item() for value in evidence_precisions(phi[None], y[None], points))
    # Rows of zeros (the masked points of a static-shape batch) change nothing, even where they
    # make the rows outnumber the basis functions (the other eigendecomposition).
    padded = torch.cat([phi, torch.zeros(basis, basis, dtype=torch.float64)])
    zeros = torch.zeros(basis, dtype=torch.float64)
    padded_fit = evidence_precisions(padded[None], torch.cat([y, zeros])[None], points)
    expected = torch.tensor([log_ratio, log_beta, spread], dtype=torch.float64)
    torch.testing.assert_close(torch.cat(padded_fit), expected, atol=1e-4, rtol=0)
    if points < basis:  # fitted exactly: the evidence cannot tell small noise from none
        assert spread > 2
        return
    # Enough points: a sharp posterior, at the marginal likelihood's maximum, near the true noise.
    assert spread < 1
    best = marginal_log_likelihood(phi, y, log_ratio, log_beta)
    others = [
        marginal_log_likelihood(phi, y, log_ratio + step_ratio, log_beta + step_beta)
        for step_ratio in torch.linspace(-3, 3, 13).tolist()
        for step_beta in torch.linspace(-1.5, 1.5, 13).tolist()
    ]
    assert max(others) < best + 0.1
    assert abs(log_beta - 2 * math.log(1 / noise)) < 1.0


def test_readout_evidence_moves_the_precisions_by_the_learned_weight():
    """Weight 0 is the network's own guess; weight 1 the evidence's posterior means; fewer than
    two context points leave the guess alone."""
    torch.manual_seed(0)
    readout = BayesianLinearReadout(max_features=3, emsize=32, num_basis=8, evidence=True)
    x_context, y_context, x_query = inputs(features=3)
    summary = torch.randn(2, 32)
    guess = BayesianLinearReadout(max_features=3, emsize=32, num_basis=8)
    guess.load_state_dict(readout.state_dict(), strict=False)
    with torch.no_grad():
        readout.evidence_weight.bias.fill_(-5.0)  # weight 0
        torch.testing.assert_close(
            readout(summary, x_context, y_context, x_query), guess(summary, x_context, y_context, x_query)
        )
        readout.evidence_weight.bias.fill_(5.0)  # weight 1
        loc, log_scale = readout(summary, x_context, y_context, x_query)
        phi = readout.features(torch.cat([x_context, x_query], 1), readout.norm(summary)).double()
        phi_context, phi_query = phi[:, :6], phi[:, 6:]
        y = y_context.double()
        log_ratio, log_beta, _ = evidence_precisions(phi_context, y, 6)
        for b in range(2):
            precision = torch.exp(log_ratio[b]) * torch.eye(8, dtype=torch.float64) + phi_context[b].T @ phi_context[b]
            covariance = torch.linalg.inv(precision)
            mean = phi_query[b] @ covariance @ phi_context[b].T @ y[b]
            variance = (1 + ((phi_query[b] @ covariance) * phi_query[b]).sum(-1)) / log_beta[b].exp()
            torch.testing.assert_close(loc[b].double(), mean, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(log_scale[b].double(), 0.5 * variance.log(), atol=1e-5, rtol=1e-4)
        one_point = [t[:, :1] for t in (x_context, y_context)]
        torch.testing.assert_close(readout(summary, *one_point, x_query), guess(summary, *one_point, x_query))
