"""The evaluate and score sections: what is measured and gated, and how the lists are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recsys_spark.config.base import EVENT_TYPES, _at_least, iso_date
from recsys_spark.errors import ConfigError
from recsys_spark.metrics import coverage_names, list_metric_names, metric_names

BASELINES = ("popularity", "cooccurrence", "als", "ease")
COOCCURRENCE_SIMILARITIES = ("count", "cosine")


@dataclass(frozen=True)
class EvaluateConfig:
    # How featurize splits the data into training, validation and test (features/split.py):
    #   temporal: global cutoffs, the last featurize.test_days days are the test period and the
    #     featurize.validation_days before them validation (what production serves: tomorrow);
    #   leave_last_out: each user's last new item is the test target, the one before it the
    #     validation target, training sees the user's steps before that (SASRec, RecBole);
    #   auto: temporal when its validation and test periods each hold enough users (see
    #     featurize.min_eval_users and min_eval_user_share), else leave_last_out, with a warning
    #     in the run summary. A log with a thin recent tail gets leave_last_out.
    protocol: Literal["auto", "temporal", "leave_last_out"] = "auto"
    # Cut-offs K of every @K metric (recall, ndcg, map, hitrate, coverage, novelty, ...).
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    # Compares rankers, tunes the baselines on validation and drives the registry gate.
    primary_metric: str = "ndcg@20"
    # Which model version to evaluate: an alias of mlflow.registered_model.
    model_alias: str = "challenger"
    # The alias the gate moves to the challenger when it wins (scoring reads it).
    champion_alias: str = "champion"
    block_size: int = 1024
    # Items a user had any of these events on before the cutoff are never recommended (nor
    # counted as targets). All four: features' seen_items; a subset reads paths.clean.
    exclude_seen_event_types: list[str] = field(
        default_factory=lambda: ["view", "cart", "remove_from_cart", "purchase"]
    )
    # Users with fewer distinct items than this before the cutoff are "cold" in the breakdown.
    cold_user_threshold: int = 5
    # Head items: the most popular items that make up this share of interactions before the cutoff.
    head_share: float = 0.2
    # Baselines ranked beside the model: any of popularity, cooccurrence, als, ease.
    baselines: list[str] = field(default_factory=lambda: ["popularity", "cooccurrence", "als", "ease"])
    # Co-occurrence grid (tuned on validation): max step distance of a pair, weight decay per
    # step back in the user's history, similarity (count | cosine).
    cooccurrence_windows: list[int] = field(default_factory=lambda: [1, 3, 10])
    cooccurrence_decays: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    cooccurrence_similarities: list[str] = field(default_factory=lambda: ["count", "cosine"])
    # Spark MLlib implicit ALS grid (tuned on validation), and its fixed settings.
    als_ranks: list[int] = field(default_factory=lambda: [32, 64])
    als_reg_params: list[float] = field(default_factory=lambda: [0.01, 0.1])
    als_alphas: list[float] = field(default_factory=lambda: [1.0, 10.0])
    als_max_iter: int = 10
    als_seed: int = 11
    # EASE grid (Steck 2019; tuned on validation): the L2 weight lambda, and the recency decay:
    # an item weighs decay**t, t the steps from the end of a training window or of the user's
    # history to its latest step there (1.0 = plain, binary EASE).
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 100.0, 500.0, 2000.0])
    ease_decays: list[float] = field(default_factory=lambda: [1.0, 0.8])
    # EASE inverts an items x items matrix on the driver (float64, about 24 n^2 bytes: 9.6 GB at
    # 20,000 items) and each Spark worker holds n x n float32 weights: above this many items
    # with training interactions it is skipped, with a log line, and the run goes on without it.
    ease_max_items: int = 20000
    # Registry gate: auto (by the margins below), force (always promote), block (never).
    promotion: Literal["auto", "force", "block"] = "auto"
    PROMOTIONS = ("auto", "force", "block")  # not a key: the values promotion takes
    # The challenger must beat the champion's primary metric by more than this (absolute).
    gate_min_improvement: float = 0.0
    # ... and lose at most this much coverage@K (absolute; K of the primary metric).
    gate_max_coverage_loss: float = 0.05
    # Intervals: a percentile bootstrap over the test users (evaluation/intervals.py), with this
    # many resamples, this seed and this level; the gate reads the lower bound of the paired
    # difference challenger - champion, which must exceed gate_min_improvement.
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 5
    confidence: float = 0.95
    # Off-policy evaluation of the challenger under the score settings (evaluation/offpolicy.py)
    # on paths.clean_feedback: its last ope_days run dates (0 = all); an estimate whose importance
    # weights have an effective sample size below ope_min_ess is withheld, with the reason; the
    # DM/DR reward model shrinks each item's click lift to 1 by ope_prior_clicks pseudo-clicks.
    ope_days: int = 7
    ope_min_ess: float = 100.0
    ope_prior_clicks: float = 5.0

    @classmethod
    def check_promotion(cls, promotion: str) -> None:
        """Raise ConfigError unless ``promotion`` is a value of evaluate.promotion (the gate, given
        the value alone, checks it here too)."""
        if promotion not in cls.PROMOTIONS:
            raise ConfigError(f"evaluate.promotion: {promotion!r} is not one of {', '.join(cls.PROMOTIONS)}")

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first EASE or bootstrap setting out of range (types are checked
        by from_dict): before Spark starts, not after training."""
        self.check_promotion(self.promotion)
        if self.ope_days < 0:
            raise ConfigError(f"evaluate.ope_days: expected >= 0 (0 = every run date), got {self.ope_days}")
        if not self.ope_min_ess >= 0:
            raise ConfigError(f"evaluate.ope_min_ess: expected >= 0, got {self.ope_min_ess}")
        if not self.ope_prior_clicks > 0:
            raise ConfigError(f"evaluate.ope_prior_clicks: expected > 0, got {self.ope_prior_clicks}")
        ease = "ease" in self.baselines  # an unused grid may be empty
        if (ease and not self.ease_lambdas) or not all(v > 0 for v in self.ease_lambdas):
            raise ConfigError(f"evaluate.ease_lambdas must be a non-empty list of values > 0, got {self.ease_lambdas}")
        if (ease and not self.ease_decays) or not all(0 < v <= 1 for v in self.ease_decays):
            raise ConfigError(f"evaluate.ease_decays must be a non-empty list of values in (0, 1], got "
                              f"{self.ease_decays}")
        if self.ease_max_items < 1:
            raise ConfigError(f"evaluate.ease_max_items must be >= 1, got {self.ease_max_items}")
        if self.bootstrap_samples < 1:
            raise ConfigError(f"evaluate.bootstrap_samples: expected a positive integer, got {self.bootstrap_samples}")
        if self.bootstrap_seed < 0:
            raise ConfigError(f"evaluate.bootstrap_seed: expected >= 0, got {self.bootstrap_seed}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"evaluate.confidence: expected a level in (0, 1), e.g. 0.95, got {self.confidence}")
        ks = list(self.ks)
        if not ks or min(ks) < 1:
            raise ConfigError(f"evaluate.ks: expected positive cut-offs, got {ks}")
        known = metric_names(ks) + coverage_names(ks) + list_metric_names(ks)
        if self.primary_metric not in known:
            raise ConfigError(f"evaluate.primary_metric: {self.primary_metric!r} is not one of {', '.join(known)}")
        if self.block_size < 1:
            raise ConfigError(f"evaluate.block_size: expected a positive integer, got {self.block_size}")
        unknown = sorted(set(self.exclude_seen_event_types) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(f"evaluate.exclude_seen_event_types: unknown event type(s) {unknown}; known: "
                              f"{list(EVENT_TYPES)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"evaluate.baselines: unknown baseline(s) {unknown}; known: {list(BASELINES)}")
        if not 0 < self.head_share <= 1:
            raise ConfigError(f"evaluate.head_share: expected a share in (0, 1], got {self.head_share}")
        if self.cold_user_threshold < 0:
            raise ConfigError(f"evaluate.cold_user_threshold: expected >= 0, got {self.cold_user_threshold}")
        if self.champion_alias == self.model_alias:
            raise ConfigError(f"evaluate.champion_alias: must differ from evaluate.model_alias ({self.model_alias!r})")
        if self.gate_max_coverage_loss < 0:
            raise ConfigError(f"evaluate.gate_max_coverage_loss: expected >= 0, got {self.gate_max_coverage_loss}")
        grids = {
            "cooccurrence_windows": (self.cooccurrence_windows, lambda v: v >= 1),
            "cooccurrence_decays": (self.cooccurrence_decays, lambda v: 0 < v <= 1),
            "cooccurrence_similarities": (self.cooccurrence_similarities, lambda v: v in COOCCURRENCE_SIMILARITIES),
            "als_ranks": (self.als_ranks, lambda v: v >= 1),
            "als_reg_params": (self.als_reg_params, lambda v: v > 0),
            "als_alphas": (self.als_alphas, lambda v: v >= 0),
        }
        for key, (values, valid) in grids.items():
            family = "cooccurrence" if key.startswith("cooc") else "als"
            if family in self.baselines and (not values or not all(valid(v) for v in values)):
                raise ConfigError(f"evaluate.{key}: invalid grid {values}")
        if "als" in self.baselines and self.als_max_iter < 1:
            raise ConfigError(f"evaluate.als_max_iter: expected a positive integer, got {self.als_max_iter}")


@dataclass(frozen=True)
class ScoreConfig:
    top_k: int = 20
    # The model scored with: models:/<mlflow.registered_model>@<model_alias>; the evaluate
    # stage's gate moves `champion`. Set `challenger` to score a model not yet promoted.
    model_alias: str = "champion"
    # A registered version number instead of the alias; 0 means "use the alias".
    model_version: int = 0
    # What evaluate's gate may put forward to serve: "auto", the deep model unless the best tuned
    # baseline beats it on validation (the upper bound of the paired model - baseline interval
    # below 0), then that baseline, registered as a version of mlflow.registered_model with the
    # same pyfunc; "model", the deep model always (this stage then refuses a baseline version).
    ranker: Literal["auto", "model"] = "auto"
    RANKERS = ("auto", "model")  # not a key: the values ranker takes
    # A product on which the user has an event of one of these types (any time in paths.clean)
    # is never recommended to them; [] excludes nothing, add "view" to exclude everything seen.
    exclude_event_types: list[str] = field(default_factory=lambda: ["purchase"])
    # CSV (with a header) or Parquet holding a product_id column: products never recommended
    # to anyone (e.g. out of stock). Empty = none.
    exclude_items_path: str = ""
    # At most this many items of one category_id in a user's list (diversity); 0 = no cap.
    category_cap: int = 0
    # Exploration: each position of a model list is, with this probability, an exploration
    # slot (source = explore) that score.explore_policy fills from the pool; 0 = none.
    explore_share: float = 0.05
    # Under-exposed items: this share of the model's catalogue with the fewest recent users.
    explore_pool_share: float = 0.5
    # How the pool is explored (README, "score"): "epsilon", a uniform pick per exploration
    # slot; "thompson", the pool items of highest click rate drawn from their Beta posteriors;
    # "boost", score.boost_bonus added to the pool items' scores (+ epsilon slots if any).
    explore_policy: str = "epsilon"
    EXPLORE_POLICIES = ("epsilon", "thompson", "boost")  # not a key: the names explore_policy takes
    # Monte-Carlo draws per user of the propensity of a random list (the served draw is one):
    # error <= 0.5 / sqrt(samples - 1), 0.035 at 200. Cost: each model user's list is built
    # `samples` times from its top 2K (5K under a cap) items, the model's scores once: the list
    # building of a list without exploration, times `samples`.
    propensity_samples: int = 200
    # Thompson: prior Beta(s m, s (1 - m)) of an item's click rate, m = (recent users + 1) /
    # (users active in the last popular_days + 2), s = this strength (pseudo-exposures).
    thompson_prior_strength: float = 10.0
    # Thompson: posterior draws of the whole pool, made once per run date; a user's draw picks
    # one (cost: draws x pool Beta samples on the driver).
    thompson_draws: int = 1024
    # Thompson: Parquet of logged feedback counts (product_id, exposures, clicks), added to the
    # priors; empty = priors only. featurize writes them to <paths.features>/feedback_counts
    # (from paths.clean_feedback, the run dates before its serve snapshot).
    feedback_counts_path: str = ""
    # Boost: added to a pool item's model score before the greedy ranking (score units: for a
    # "mixture" model a log-probability, +1 multiplies the item's probability by e).
    boost_bonus: float = 1.0
    # "Recent" for the cold-start fallback and exposure: the last N days of paths.clean.
    popular_days: int = 7
    # Users per matrix multiply inside a task: a task holds block_size x catalogue float32
    # scores (256 x 100k items = 100 MB), whatever the number of users.
    block_size: int = 256
    # Seeds the exploration draws, with the user and the run date (re-runs are identical).
    seed: int = 13
    # Partition written (ISO date); empty = today (UTC). Re-running a date replaces it.
    run_date: str = ""

    @classmethod
    def check_ranker(cls, ranker: str) -> None:
        """Raise ConfigError unless ``ranker`` is a value of score.ranker (the gate's choice of the
        ranker, given the value alone, checks it here too)."""
        if ranker not in cls.RANKERS:
            raise ConfigError(f"score.ranker: {ranker!r} is not one of {', '.join(map(repr, cls.RANKERS))}")

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first invalid score setting."""
        _at_least("score", self, {"top_k": 1, "block_size": 1, "popular_days": 1, "category_cap": 0,
                                  "model_version": 0, "propensity_samples": 10, "thompson_draws": 1})
        if not 0.0 <= self.explore_share <= 1.0:
            raise ConfigError(f"score.explore_share must lie in [0, 1], got {self.explore_share}")
        if not 0.0 < self.explore_pool_share <= 1.0:
            raise ConfigError(f"score.explore_pool_share must lie in (0, 1], got {self.explore_pool_share}")
        self.check_ranker(self.ranker)
        if self.explore_policy not in self.EXPLORE_POLICIES:
            raise ConfigError(f"score.explore_policy: {self.explore_policy!r} is not one of {', '.join(self.EXPLORE_POLICIES)}")
        if self.explore_policy == "thompson" and self.explore_share == 0:
            raise ConfigError("score.explore_policy=thompson fills exploration slots: set score.explore_share > 0")
        if not self.thompson_prior_strength > 0:
            raise ConfigError(f"score.thompson_prior_strength must be > 0, got {self.thompson_prior_strength}")
        if self.feedback_counts_path and self.explore_policy != "thompson":
            raise ConfigError(f"score.feedback_counts_path is read by score.explore_policy=thompson only, "
                              f"not {self.explore_policy!r}")
        if not self.boost_bonus >= 0 or (self.explore_policy == "boost" and self.boost_bonus == 0):
            raise ConfigError(f"score.boost_bonus must be >= 0 (> 0 with score.explore_policy=boost), got {self.boost_bonus}")
        unknown = [t for t in self.exclude_event_types if t not in EVENT_TYPES]
        if unknown:
            raise ConfigError(f"score.exclude_event_types: {unknown} not among {list(EVENT_TYPES)}")
        if not self.model_version and not self.model_alias:
            raise ConfigError("score.model_alias is empty and score.model_version is 0: name the model to score with")
        iso_date("score.run_date", self.run_date)
