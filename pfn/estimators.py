"""scikit-learn estimators around a PFN: `PFNRegressor` and `PFNClassifier`.

A PFN learns in context: `fit` only validates and stores the training data, and every
prediction is one forward pass of the network with that data as context. All predictions go
through `PFN.predict` (pfn/predictor.py), the one place where data are normalised.

    from pfn import PFNRegressor
    model = PFNRegressor().fit(X_train, y_train)
    model.predict(X_test)                       # posterior predictive means
    model.predict_quantiles(X_test, (0.05, 0.95))
    model.predict_distribution(X_test)          # a RiemannDistribution, one per test point (a
                                                # RiemannMixture: an ensemble of a linear-readout model)

Both estimators work in `Pipeline`, `cross_val_score` and `GridSearchCV`, on numpy arrays and
pandas DataFrames, and pass `sklearn.utils.estimator_checks.check_estimator` (see
`EXPECTED_FAILED_CHECKS` for the checks that cannot apply to a learner of this kind).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from pfn.checkpoint import resolve_checkpoint
from pfn.distributions import CategoricalDistribution, RiemannDistribution, RiemannMixture
from pfn.ensemble import cube_view_plan, has_cube_symmetries
from pfn.predictor import PFN

DEFAULT_REGRESSOR = "regressor"
DEFAULT_CLASSIFIER = "classifier"

# The checks of `sklearn.utils.estimator_checks.check_estimator` that a PFN cannot pass, with the
# reason; pass the dict as `check_estimator(..., expected_failed_checks=...)`. Every other check
# passes with the shipped defaults.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_methods_subset_invariance": (
        "a query's prediction depends only on the context and itself, but float32 matrix products "
        "round differently for different numbers of queries, so predicting a subset can differ from "
        "predicting all rows in the 7th significant digit, beyond the check's tolerance of 1e-7"
    ),
}


@functools.lru_cache(maxsize=8)
def _load_model(path: str, modified: float, device: str, precision: str) -> PFN:
    # Keyed by modification time so a re-trained file is read again; models are read-only
    # after loading, so estimators (and clones made by GridSearchCV) may share one.
    return PFN.load(path, device=device, precision=precision)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return device


@dataclass(frozen=True)
class EnsembleMember:
    """One test-time view of the data: a feature order, which of the reordered features are
    negated, and (classification) the label ids used."""

    feature_order: np.ndarray  # [features], a permutation
    negated: np.ndarray  # [features] bool, after reordering
    class_ids: np.ndarray | None = None  # [classes_], distinct ids in 0..num_classes-1

    def view(self, X: np.ndarray) -> np.ndarray:
        reordered = X[:, self.feature_order]
        return np.where(self.negated, -reordered, reordered)


class _PFNEstimator(BaseEstimator):
    """What the regressor and the classifier share: loading the model, storing the context,
    ensemble members, and predicting in chunks of query points."""

    _default_model: str = ""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        n_ensemble: int = 1,
        random_state: int | np.random.RandomState | None = None,
        chunk_size: int = 1024,
        precision: str = "float32",
    ) -> None:
        self.model = model
        self.device = device
        self.n_ensemble = n_ensemble
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.precision = precision

    # -- fitting ----------------------------------------------------------------------------
    def _load(self) -> PFN:
        name = self._default_model if self.model is None else self.model
        path = resolve_checkpoint(name)
        return _load_model(str(path.resolve()), path.stat().st_mtime, _resolve_device(self.device), self.precision)

    def _check_parameters(self) -> None:
        for name in ("n_ensemble", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def _fit_context(self, X: np.ndarray, y: np.ndarray) -> None:
        """Store the context and check it against what the model supports."""
        self.model_ = self._load()
        if self.model_.is_classifier != isinstance(self, ClassifierMixin):
            kind = "classification" if self.model_.is_classifier else "regression"
            use = "PFNClassifier" if self.model_.is_classifier else "PFNRegressor"
            raise ValueError(f"model={self.model!r} is a {kind} model ({self.model_!r}); use {use} with it")
        limit = self.model_.max_features
        if X.shape[1] > limit:
            raise ValueError(
                f"X has {X.shape[1]} features, but this model supports at most {limit}; reduce them first, "
                f"e.g. make_pipeline(PCA(n_components={limit}), {type(self).__name__}())"
            )
        data = self.model_.config.data
        trained = data.longest_context
        if X.shape[0] > trained:
            warnings.warn(
                f"the context has {X.shape[0]} points, but this model was trained on contexts of up to "
                f"{trained} points; predictions may be less accurate",
                UserWarning,
                stacklevel=3,
            )
        self.X_context_ = X
        self.y_context_ = y

    def _draw_ensemble(self, num_classes: int | None = None) -> None:
        """Member 0 is the data as given; the others reorder the features, and negate some where
        the model's prior is symmetric under that (`pfn.ensemble.has_cube_symmetries`; once
        normalised into the prior's units a negated feature is reflected), running through
        every such view before repeating one; and for a classifier use other label ids."""
        rng = check_random_state(self.random_state)
        num_features = self.X_context_.shape[1]
        if has_cube_symmetries(self.model_.prior):
            generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
            plan = cube_view_plan(1, num_features, self.n_ensemble, generator)
            views = [(order[0].numpy(), negated[0].numpy()) for order, negated in plan]
        else:  # feature orders alone
            orders = [np.arange(num_features)] + [rng.permutation(num_features) for _ in range(self.n_ensemble - 1)]
            views = [(order, np.zeros(num_features, dtype=bool)) for order in orders]
        members = []
        for index, (order, negated) in enumerate(views):
            if num_classes is None:
                ids = None
            elif index == 0:
                ids = np.arange(num_classes)
            else:
                ids = rng.permutation(self.model_.config.model.num_classes)[:num_classes]
            members.append(EnsembleMember(order, negated, ids))
        self.ensemble_ = members

    # -- predicting -------------------------------------------------------------------------
    def _check_query(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float64)

    def _chunks(self, X: np.ndarray) -> Iterator[np.ndarray]:
        # A query's prediction depends only on the context and itself, so chunking changes nothing
        # but the memory used: attention costs chunk_size x context per head.
        for start in range(0, len(X), self.chunk_size):
            yield X[start : start + self.chunk_size]

    def _member_prediction(
        self, member: EnsembleMember, y_context: np.ndarray, X: np.ndarray
    ) -> RiemannDistribution | CategoricalDistribution:
        return self.model_.predict(member.view(self.X_context_), y_context, member.view(X))


class PFNRegressor(RegressorMixin, _PFNEstimator):
    """Regression by a PFN: the posterior predictive distribution of y at each point of X.

    Args:
        model: a shipped model name (see `pfn.list_models()`) or a path to a `.pfn` file (a
            name, not a loaded `PFN`, so that cloning and hashing the parameters stay cheap);
            None means the default regression model, "regressor".
        device: "auto" (a GPU if there is one), "cpu", "cuda", ...
        n_ensemble: test-time ensemble size; members beyond the first see the features in
            another random order, some negated where the model's prior allows it (a GP or BNN
            prior: with one feature the data and its mirror image), and their predictive
            distributions are averaged. 1 = off.
        random_state: seed of the ensemble's views.
        chunk_size: query points per forward pass (bounds memory for large X).
        precision: "float32", or "bfloat16" for the network's matrix products (faster on a GPU
            and on CPUs with AVX512-BF16/AMX; the predictive distribution stays float32).
        point_estimate: what `predict` returns: "mean" (minimises squared error) or "median"
            (minimises absolute error).
    """

    _default_model = DEFAULT_REGRESSOR

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        n_ensemble: int = 1,
        random_state: int | np.random.RandomState | None = None,
        chunk_size: int = 1024,
        precision: str = "float32",
        point_estimate: str = "mean",
    ) -> None:
        super().__init__(model, device, n_ensemble, random_state, chunk_size, precision)
        self.point_estimate = point_estimate

    def fit(self, X, y) -> PFNRegressor:
        """Validate and store (X, y) as the context; nothing is trained. Returns self."""
        self._check_parameters()
        if self.point_estimate not in ("mean", "median"):
            raise ValueError(f"point_estimate must be 'mean' or 'median', got {self.point_estimate!r}")
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self._fit_context(X, y.astype(np.float64))
        self._draw_ensemble()
        return self

    def _member_distributions(self, X) -> Iterator[list[RiemannDistribution]]:
        """Each ensemble member's predictive distribution, for each chunk of X."""
        X = self._check_query(X)
        for chunk in self._chunks(X):
            yield [self._member_prediction(m, self.y_context_, chunk) for m in self.ensemble_]

    def _distributions(self, X) -> Iterator[RiemannDistribution | RiemannMixture]:
        """The predictive distribution of each chunk of X, averaged over the ensemble. Feature
        orders leave y's normalisation alone, so the members share their bucket borders, unless
        the model places them per query (model.linear_readout): then they make a `RiemannMixture`."""
        for members in self._member_distributions(X):
            yield members[0] if len(members) == 1 else RiemannDistribution.mixture(members)

    def predict_distribution(self, X) -> RiemannDistribution | RiemannMixture:
        """The posterior predictive distribution at each row of X: batch shape [n] (a
        `RiemannMixture` for an ensemble of a model with a linear readout)."""
        chunks = list(self._member_distributions(X))
        members = []
        for member in zip(*chunks, strict=True):  # one member's distributions over all chunks
            logits = torch.cat([chunk.logits for chunk in member])
            if self.model_.config.model.linear_readout:  # buckets placed per query point
                members.append(RiemannDistribution(logits, torch.cat([chunk.borders for chunk in member])))
            else:  # every chunk shares the context's normalisation, hence one set of borders
                members.append(RiemannDistribution(logits, member[0].borders[0]))
        return members[0] if len(members) == 1 else RiemannDistribution.mixture(members)

    def predict(self, X) -> np.ndarray:
        """Posterior predictive mean (or median, see `point_estimate`) at each row of X: [n]."""
        check_is_fitted(self)
        statistic = (lambda d: d.mean) if self.point_estimate == "mean" else (lambda d: d.median)
        return np.concatenate([statistic(chunk).double().cpu().numpy() for chunk in self._distributions(X)])

    def predict_quantiles(self, X, quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> np.ndarray:
        """Posterior predictive quantiles: [n, len(quantiles)], one column per level in (0, 1)."""
        levels = np.asarray(quantiles, dtype=np.float64).reshape(-1)
        if levels.size == 0 or not np.all((levels > 0) & (levels < 1)):
            raise ValueError(f"quantiles must be levels strictly between 0 and 1, got {list(quantiles)}")
        columns = []
        for chunk in self._distributions(X):
            level = torch.as_tensor(levels)  # the distribution takes it to its own dtype and device
            columns.append(chunk.icdf(level[:, None].expand(-1, *chunk.batch_shape)).T.double().cpu().numpy())
        return np.concatenate(columns)

    def log_likelihood(self, X, y) -> np.ndarray:
        """log p(y_i | context, x_i) per row: [n]. Its negative mean is the NLL per point."""
        check_is_fitted(self)
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64, y_numeric=True)
        values = []
        for chunk, targets in zip(self._distributions(X), self._chunks(y), strict=True):
            values.append(chunk.log_prob(torch.as_tensor(targets)).double().cpu().numpy())
        return np.concatenate(values)


class PFNClassifier(ClassifierMixin, _PFNEstimator):
    """Classification by a PFN: the posterior predictive class probabilities at each point of X.

    Labels may be anything `numpy.unique` can sort (integers, strings, ...); `classes_` holds
    them. The model must support at least as many classes as the labels have.

    Args:
        model: a shipped model name (see `pfn.list_models()`) or a path to a `.pfn` file (a
            name, not a loaded `PFN`, so that cloning and hashing the parameters stay cheap);
            None means the default classification model, "classifier".
        device: "auto" (a GPU if there is one), "cpu", "cuda", ...
        n_ensemble: test-time ensemble size; members beyond the first see the features in
            another random order (some negated where the model's prior allows it, as a GMM
            prior's rotations do) and the classes under other label ids, and their class
            probabilities are averaged. 1 = off.
        random_state: seed of the ensemble's views and label ids.
        chunk_size: query points per forward pass (bounds memory for large X).
        precision: "float32", or "bfloat16" for the network's matrix products (faster on a GPU
            and on CPUs with AVX512-BF16/AMX; the predictive distribution stays float32).
    """

    _default_model = DEFAULT_CLASSIFIER

    def fit(self, X, y) -> PFNClassifier:
        """Validate and store (X, y) as the context; nothing is trained. Returns self."""
        self._check_parameters()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        self._fit_context(X, encoder.transform(y))
        limit = self.model_.config.model.num_classes
        if len(self.classes_) > limit:
            raise ValueError(f"y has {len(self.classes_)} classes, but this model supports at most {limit}")
        self._draw_ensemble(num_classes=len(self.classes_))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: [n, len(classes_)], columns in the order of `classes_`."""
        X = self._check_query(X)
        chunks = []
        for chunk in self._chunks(X):
            probs = 0.0
            for member in self.ensemble_:
                distribution = self._member_prediction(member, member.class_ids[self.y_context_], chunk)
                # The network also gives (little) mass to ids absent from the context; keep the
                # classes that exist and renormalise.
                ids = torch.as_tensor(member.class_ids, device=distribution.logits.device)
                member_probs = distribution.probs[:, ids].double()
                probs = probs + member_probs / member_probs.sum(-1, keepdim=True)
            chunks.append((probs / len(self.ensemble_)).cpu().numpy())
        return np.concatenate(chunks)

    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """The most probable label at each row of X: [n], values from `classes_`."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(1)]
