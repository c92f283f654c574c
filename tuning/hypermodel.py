"""The keras-tuner hypermodel: a search space over lambda, margin, learning rate (and width).

A trial's hyperparameters are turned into a full :class:`~disentangled_ml.config.Config`
(:func:`config_from_values`), so the best trial is reproduced by ``dml train`` with the
saved config and nothing else; :meth:`DisentangledHyperModel.build` compiles the
:class:`~disentangled_ml.models.trainer.TripletModel` of that config.

Search space (names as they appear in keras-tuner's ``trial.json`` and in
TensorBoard's HParams tab):

=================  =====================================  ===========================
name               config field                           keras-tuner type
=================  =====================================  ===========================
``lambda``         ``loss.track_weight`` (dimensionless)  ``Choice``, ascending log grid, 0 first
``margin``         ``loss.margin`` (on unit-norm          ``Float``, linear
                   embeddings, Euclidean distance)
``learning_rate``  ``train.learning_rate`` (Adam step)    ``Float``, log sampling
``width``          ``model.width`` (stem filters)         ``Choice`` (only with ``widths``)
=================  =====================================  ===========================

Why lambda is a ``Choice`` over a log grid that includes 0: "no track
regularisation" (lambda = 0) is a value the paper compares against, and it cannot be
reached by log sampling. A separate on/off Boolean with a conditional Float would do
it, but keras-tuner's Bayesian oracle fills an inactive conditional hyperparameter with
its default, so the Gaussian process would see trials with the regulariser off as if
they had the smallest lambda and a different kernel distance. An *ordered* ``Choice``
is encoded by the Bayesian oracle by its index (``value_to_prob``: index-based, in
[0, 1]), so an ascending grid ``0 < l_1 < ... < l_n`` with log-spaced ``l_i`` gives it a
single ordinal axis that is a log-lambda axis with "off" as its lower limit: one
dimension, no conditional parameters, and random search draws each grid value with
equal probability.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import keras_tuner

from disentangled_ml.config import TRACK_CONDITION, Config, ConfigError

__all__ = [
    "SearchSpace",
    "DisentangledHyperModel",
    "ObjectiveLogger",
    "parse_objective",
    "objective_metric",
    "config_from_values",
    "HP_LAMBDA",
    "HP_MARGIN",
    "HP_LEARNING_RATE",
    "HP_WIDTH",
]

HP_LAMBDA = "lambda"
HP_MARGIN = "margin"
HP_LEARNING_RATE = "learning_rate"
HP_WIDTH = "width"
#: Hyperparameter name -> the Config field it sets.
HP_FIELDS = {HP_LAMBDA: "loss.track_weight", HP_MARGIN: "loss.margin",
             HP_LEARNING_RATE: "train.learning_rate", HP_WIDTH: "model.width"}
#: Hyperband's per-trial epoch budget (set by keras-tuner); becomes train.epochs.
HYPERBAND_EPOCHS = "tuner/epochs"
#: Metric name (in the epoch logs) of a weighted objective.
WEIGHTED_OBJECTIVE = "val_objective"


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (grid values that read well in tables)."""
    return float(f"{x:.{digits}g}")


def _range(name: str, value: Sequence[float]) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"search space {name}={value!r} is invalid: expected two numbers (MIN, MAX).") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"search space {name}={value!r} is invalid: MIN and MAX must be finite.")
    if lo > hi:
        raise ConfigError(f"search space {name}=({lo}, {hi}) is empty: MIN > MAX. Give MIN <= MAX.")
    return lo, hi


@dataclass(frozen=True)
class SearchSpace:
    """What the tuner searches, and what it maximises.

    Parameters
    ----------
    lambda_range : (float, float)
        Smallest and largest non-zero track-regularisation weight lambda
        (``loss.track_weight``); both > 0. ``lambda_points`` values are spaced
        evenly in log10 between them (rounded to 4 significant digits).
    lambda_points : int
        Number of non-zero grid values (>= 2, or 1 when MIN == MAX).
    include_zero_lambda : bool
        Also try lambda = 0 (no track regularisation).
    margin_range : (float, float)
        Triplet margin (``loss.margin``), sampled uniformly; >= 0. The embeddings are
        unit-norm, so distances lie in [0, 2]. MIN == MAX fixes it.
    learning_rate_range : (float, float)
        Adam learning rate (``train.learning_rate``), sampled log-uniformly; > 0.
        MIN == MAX fixes it.
    widths : tuple of int, optional
        Backbone stem widths (``model.width``, filters) to try; None keeps the base
        config's width and leaves it out of the search.
    objective : str
        What a trial maximises, on the validation triplets: ``"mean"`` (the mean
        triplet accuracy over the conditions, ``val_mean_acc``, the early-stopping
        target of ``dml train``), one condition name (``"genre"`` ->
        ``val_acc_genre``; ``"track"`` is allowed), or weights over conditions
        ``"genre=0.5,mood=0.5"`` (-> ``val_objective``, the weighted mean
        ``sum_c w_c acc_c / sum_c w_c``). Condition names are checked against the
        config by :func:`parse_objective`.
    """

    lambda_range: Tuple[float, float] = (0.01, 1.0)
    lambda_points: int = 5
    include_zero_lambda: bool = True
    margin_range: Tuple[float, float] = (0.05, 0.5)
    learning_rate_range: Tuple[float, float] = (1e-4, 1e-2)
    widths: Optional[Tuple[int, ...]] = None
    objective: str = "mean"

    def __post_init__(self) -> None:
        lam = _range("lambda_range", self.lambda_range)
        if lam[0] <= 0:
            raise ConfigError(f"search space lambda_range={lam} is invalid: lambda values must be > 0 (lambda < 0 "
                              "rewards collapsing a track's segments apart; lambda = 0 is added by "
                              "include_zero_lambda, since log spacing cannot reach it).")
        object.__setattr__(self, "lambda_range", lam)
        if not isinstance(self.lambda_points, int) or self.lambda_points < 1:
            raise ConfigError(f"search space lambda_points={self.lambda_points!r} is invalid: expected an integer >= 1.")
        if self.lambda_points == 1 and lam[0] != lam[1]:
            raise ConfigError(f"search space lambda_points=1 needs lambda_range MIN == MAX (got {lam}); "
                              "give lambda_points >= 2 to span a range.")
        margin = _range("margin_range", self.margin_range)
        if margin[0] < 0:
            raise ConfigError(f"search space margin_range={margin} is invalid: the margin must be >= 0 "
                              "(a negative margin rewards wrong orderings).")
        object.__setattr__(self, "margin_range", margin)
        lr = _range("learning_rate_range", self.learning_rate_range)
        if lr[0] <= 0:
            raise ConfigError(f"search space learning_rate_range={lr} is invalid: learning rates must be > 0 "
                              "(they are sampled on a log scale).")
        object.__setattr__(self, "learning_rate_range", lr)
        if self.widths is not None:
            widths = tuple(self.widths)
            if not widths:
                raise ConfigError("search space widths=() is empty: give at least one width, or None to keep the "
                                  "config's model.width.")
            if any(not isinstance(w, int) or isinstance(w, bool) or w < 4 for w in widths):
                raise ConfigError(f"search space widths={widths!r} is invalid: expected integers >= 4 (filters).")
            if len(set(widths)) != len(widths):
                raise ConfigError(f"search space widths={widths!r} repeats a value.")
            object.__setattr__(self, "widths", tuple(sorted(widths)))
        if not isinstance(self.objective, str) or not self.objective.strip():
            raise ConfigError(f"search space objective={self.objective!r} is invalid: expected 'mean', a condition "
                              "name, or weights like 'genre=0.5,mood=0.5'.")
        _parse_objective_syntax(self.objective)  # names are checked against a config later

    @property
    def lambda_grid(self) -> Tuple[float, ...]:
        """Ascending lambda values tried: ``(0.0,)`` (if included) + the log grid."""
        lo, hi = self.lambda_range
        n = self.lambda_points
        if lo == hi:
            grid = [lo]
        else:
            grid = [_sig(lo * (hi / lo) ** (i / (n - 1))) for i in range(n)]
        grid = sorted(set(grid))
        return tuple(([0.0] if self.include_zero_lambda else []) + grid)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lambda_range"] = list(self.lambda_range)
        d["margin_range"] = list(self.margin_range)
        d["learning_rate_range"] = list(self.learning_rate_range)
        d["widths"] = None if self.widths is None else list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise ConfigError(f"unknown search space key(s) {sorted(bad)}; known: {sorted(known)}.")
        d = dict(d)
        for key in ("lambda_range", "margin_range", "learning_rate_range"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("widths") is not None:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


_OBJECTIVE_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*([^=,]+?)\s*$")


def _parse_objective_syntax(spec: str) -> Dict[str, float]:
    """``{name: weight}`` from an objective string (``{}`` for ``"mean"``); names not checked."""
    spec = spec.strip()
    if spec == "mean":
        return {}
    if "=" not in spec:
        return {spec: 1.0}
    weights: Dict[str, float] = {}
    for term in spec.split(","):
        m = _OBJECTIVE_TERM.match(term)
        if not m:
            raise ConfigError(f"objective {spec!r}: term {term!r} must look like CONDITION=WEIGHT, "
                              "e.g. 'genre=0.5,mood=0.5'.")
        name, value = m.group(1), m.group(2)
        try:
            w = float(value)
        except ValueError:
            raise ConfigError(f"objective {spec!r}: weight {value!r} of {name!r} is not a number.") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"objective {spec!r}: weight {w} of {name!r} must be a finite number >= 0.")
        if name in weights:
            raise ConfigError(f"objective {spec!r} names {name!r} twice.")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise ConfigError(f"objective {spec!r}: the weights sum to 0; give at least one positive weight.")
    return weights


def parse_objective(spec: str, config: Config) -> Dict[str, float]:
    """Validate an objective string against ``config``'s conditions.

    Returns
    -------
    dict
        ``{}`` for ``"mean"``, else ``{condition: weight}`` (weights >= 0, sum > 0);
        ``"track"`` (the track triplets) counts as a condition here.

    Raises
    ------
    ConfigError
        on a malformed string or a condition the config does not have.
    """
    weights = _parse_objective_syntax(spec)
    known = tuple(config.conditions.names) + (TRACK_CONDITION,)
    unknown = [n for n in weights if n not in known]
    if unknown:
        raise ConfigError(f"objective {spec!r} names unknown condition(s) {unknown}; the config's conditions are "
                          f"{list(known)} (or use 'mean').")
    return weights


def objective_metric(weights: Mapping[str, float]) -> str:
    """Name of the epoch-log metric a search maximises for ``parse_objective``'s result."""
    if not weights:
        return "val_mean_acc"
    if len(weights) == 1:
        return f"val_acc_{next(iter(weights))}"
    return WEIGHTED_OBJECTIVE


class ObjectiveLogger(keras.callbacks.Callback):
    """Adds ``val_objective = sum_c w_c val_acc_c / sum_c w_c`` to the epoch logs.

    Put it before every callback that reads the objective (keras-tuner's, early
    stopping, TensorBoard): they all receive the same logs dict.
    """

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        self.weights = dict(weights)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        total = sum(self.weights.values())
        missing = [c for c in self.weights if f"val_acc_{c}" not in logs]
        if missing:
            raise ConfigError(f"the objective needs validation accuracies {missing}, which the epoch logs lack "
                              "(no validation data?).")
        logs[WEIGHTED_OBJECTIVE] = float(sum(w * float(logs[f"val_acc_{c}"]) for c, w in self.weights.items()) / total)


def config_from_values(base: Config, values: Mapping[str, Any]) -> Config:
    """The Config of one trial: ``base`` with the trial's hyperparameter values.

    ``values`` is a trial's ``hyperparameters.values`` (names of :data:`HP_FIELDS`; a
    Hyperband trial's ``tuner/epochs`` becomes ``train.epochs``). Names that are not
    hyperparameters of this module are ignored.
    """
    overrides = {field: values[name] for name, field in HP_FIELDS.items() if name in values}
    if HP_WIDTH in overrides:
        overrides["model.width"] = int(overrides["model.width"])
    if HYPERBAND_EPOCHS in values:
        overrides["train.epochs"] = int(values[HYPERBAND_EPOCHS])
    return base.replace(**overrides) if overrides else base


class DisentangledHyperModel(keras_tuner.HyperModel):
    """Builds and trains the triplet model of one trial.

    Parameters
    ----------
    base_config : Config
        Everything that is not searched (frontend with its measured mel statistics,
        data, schedule, epochs and steps per epoch). Write it once with
        :func:`disentangled_ml.training.prepare_run` and pass ``RunData.config``.
    space : SearchSpace
        What to search.
    run_data : RunData, optional
        Splits and fixed validation triplets (from ``prepare_run``); needed by
        :meth:`fit`, not by :meth:`build`.

    Raises
    ------
    ConfigError
        when the objective names a condition ``base_config`` does not have.
    """

    def __init__(self, base_config: Config, space: Optional[SearchSpace] = None, run_data=None):
        super().__init__(name="disentangled")
        self.base_config = base_config
        self.space = space or SearchSpace()
        self.run_data = run_data
        self.objective_weights = parse_objective(self.space.objective, base_config)

    # -- the space ---------------------------------------------------------------------
    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> Dict[str, Any]:
        """Register the space in ``hp`` (idempotent) and return the current values."""
        s = self.space
        values: Dict[str, Any] = {}
        grid = list(s.lambda_grid)
        values[HP_LAMBDA] = (hp.Choice(HP_LAMBDA, grid, ordered=True) if len(grid) > 1
                             else hp.Fixed(HP_LAMBDA, grid[0]))
        lo, hi = s.margin_range
        values[HP_MARGIN] = hp.Float(HP_MARGIN, lo, hi) if lo < hi else hp.Fixed(HP_MARGIN, lo)
        lo, hi = s.learning_rate_range
        values[HP_LEARNING_RATE] = (hp.Float(HP_LEARNING_RATE, lo, hi, sampling="log") if lo < hi
                                    else hp.Fixed(HP_LEARNING_RATE, lo))
        if s.widths is not None:
            values[HP_WIDTH] = (hp.Choice(HP_WIDTH, list(s.widths), ordered=True) if len(s.widths) > 1
                                else hp.Fixed(HP_WIDTH, s.widths[0]))
        return values

    def config_for(self, hp: keras_tuner.HyperParameters) -> Config:
        """The full Config a trial trains with (what ``best.json`` holds for the best trial)."""
        values = dict(self.declare_hyperparameters(hp))
        if HYPERBAND_EPOCHS in hp.values:
            values[HYPERBAND_EPOCHS] = hp.values[HYPERBAND_EPOCHS]
        return config_from_values(self.base_config, values)

    @property
    def objective(self) -> keras_tuner.Objective:
        """What the oracle maximises (see :class:`SearchSpace`)."""
        return keras_tuner.Objective(objective_metric(self.objective_weights), direction="max")

    # -- build and train ---------------------------------------------------------------
    def build(self, hp: keras_tuner.HyperParameters):
        """A compiled :class:`~disentangled_ml.models.trainer.TripletModel` for ``hp``."""
        from disentangled_ml.models.trainer import build_triplet_model

        return build_triplet_model(self.config_for(hp))

    def callbacks(self, verbose: int = 0) -> List[keras.callbacks.Callback]:
        """Per-trial callbacks: the weighted objective (if any), then ``dml train``'s schedule.

        The schedule (learning-rate logger, ReduceLROnPlateau on ``val_loss``,
        EarlyStopping on ``val_mean_acc``) is the one ``dml train`` uses, so the best
        trial's config retrains the same way. keras-tuner deep-copies these for each
        trial.
        """
        from disentangled_ml.training import schedule_callbacks

        out: List[keras.callbacks.Callback] = []
        if objective_metric(self.objective_weights) == WEIGHTED_OBJECTIVE:
            out.append(ObjectiveLogger(self.objective_weights))
        return out + schedule_callbacks(self.base_config, verbose=verbose)

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=0, **kwargs):
        """Train ``model`` for one trial on the run data; returns the Keras ``History``.

        Epochs and steps per epoch come from the trial's config (``train.epochs``,
        ``train.steps_per_epoch``), except under Hyperband, which passes ``epochs``
        and ``initial_epoch``. Every trial sees the same training stream (the
        pipeline is seeded by ``data.seed``) and the same validation triplets.
        """
        if self.run_data is None:
            raise ConfigError("DisentangledHyperModel.fit needs run_data (from disentangled_ml.training.prepare_run).")
        if args or kwargs:
            unexpected = sorted(kwargs) + [f"positional argument {i}" for i in range(len(args))]
            raise TypeError(f"DisentangledHyperModel.fit trains on its run_data; unexpected {unexpected}.")
        cfg = self.config_for(hp)
        train_ds, val_ds, val_steps = self.run_data.datasets(cfg.train.batch_size, config=cfg)
        return model.fit(train_ds, epochs=int(epochs or cfg.train.epochs), initial_epoch=int(initial_epoch),
                         steps_per_epoch=cfg.train.steps_per_epoch, validation_data=val_ds,
                         validation_steps=val_steps, callbacks=list(callbacks or []), verbose=verbose)

    # -- TensorBoard HParams -----------------------------------------------------------
    def hparams_domains(self) -> Dict[str, Any]:
        """``{name: tensorboard HParam}`` for every searched hyperparameter."""
        from tensorboard.plugins.hparams import api as hp_api

        s = self.space
        grid = list(s.lambda_grid)
        domains = {HP_LAMBDA: hp_api.HParam(HP_LAMBDA, hp_api.Discrete(grid), description="loss.track_weight")}
        lo, hi = s.margin_range
        domains[HP_MARGIN] = hp_api.HParam(HP_MARGIN, hp_api.RealInterval(lo, hi) if lo < hi
                                           else hp_api.Discrete([lo]), description="loss.margin")
        lo, hi = s.learning_rate_range
        domains[HP_LEARNING_RATE] = hp_api.HParam(HP_LEARNING_RATE, hp_api.RealInterval(lo, hi) if lo < hi
                                                  else hp_api.Discrete([lo]), description="train.learning_rate")
        if s.widths is not None:
            domains[HP_WIDTH] = hp_api.HParam(HP_WIDTH, hp_api.Discrete(list(s.widths)), description="model.width")
        return domains

    def hparams_values(self, hp: keras_tuner.HyperParameters) -> Dict[Any, Any]:
        """``{HParam: value}`` of one trial, for ``hparams_api.KerasCallback``."""
        domains = self.hparams_domains()
        values = self.declare_hyperparameters(hp)
        return {domains[name]: (int(v) if name == HP_WIDTH else float(v)) for name, v in values.items()}

    def hparams_metrics(self) -> List[Any]:
        """The metrics shown against the hyperparameters (validation scalars of each trial run)."""
        from tensorboard.plugins.hparams import api as hp_api

        names = ["mean_acc"] + [f"acc_{c}" for c in self.base_config.conditions.names] + [f"acc_{TRACK_CONDITION}",
                                                                                          "loss"]
        if objective_metric(self.objective_weights) == WEIGHTED_OBJECTIVE:
            names.insert(0, "objective")
        # Keras' TensorBoard callback writes val_<m> as "epoch_<m>" in the run's validation/ folder.
        return [hp_api.Metric(f"epoch_{n}", group="validation", display_name=f"val_{n}") for n in names]
