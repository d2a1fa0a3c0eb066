"""The train section, and the opt-in search over it (``search.space`` parsed here)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from recsys_spark.config.base import _bounded_waits, _check, _describe, _resolve
from recsys_spark.errors import ConfigError

# How a model turns its history into scores while it trains under train.user_vector=auto.
TRAINING_USER_VECTOR = "mixture"


@dataclass(frozen=True)
class TrainConfig:
    # How the training processes start; each runs the same training function:
    #   horovod_spark: Horovod (gloo/NCCL), one process per Spark task (horovod.spark.run);
    #   torch_distributor: torch.distributed DDP (gloo on CPU, NCCL on GPU), Spark's TorchDistributor;
    #   local: one process, in the driver. (`horovodrun ... python -m recsys_spark.train.horovodrun`
    #   runs the same function on a plain cluster.)
    launcher: Literal["horovod_spark", "torch_distributor", "local"] = "horovod_spark"
    num_proc: int = 2
    # horovod_spark: the training processes must all have started (Spark task slots free) and met
    # within this many seconds, else the stage stops with an error naming this key.
    start_timeout_s: int = 600
    threads_per_proc: int = 1
    # Bind each training process (every thread of it: compute, reader, Horovod/gloo) to its own
    # threads_per_proc CPUs, local rank r taking CPUs r*t .. r*t+t-1 of those it may use, as
    # `horovodrun --binding-args="--bind-to core"` does. Off: the OS schedules freely.
    pin_cpus: bool = False
    # Horovod's background thread wakes every this many ms to agree with the other ranks on the
    # tensors ready to reduce (HOROVOD_CYCLE_TIME, set in each process before hvd.init()). Each
    # wake-up costs CPU, which ranks of one CPU each feel: at Horovod's default of 1 ms they
    # computed slower than a lone process, at 5 ms as fast (figures: benchmarks/RESULTS.md,
    # "Measurements behind code choices"). 0 leaves Horovod's own setting (the environment's
    # HOROVOD_CYCLE_TIME, or 1 ms); a GPU cluster may prefer that.
    horovod_cycle_time_ms: float = 5.0
    # auto: the GPU of each process's local rank when torch sees one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on GPU (bf16 where supported, else fp16 with loss scaling); ignored on CPU.
    amp: bool = True
    # Continue from <paths.checkpoints>/last.pt (model, optimizer, scheduler, RNG states) if present.
    resume: bool = False
    # "full": start from freshly initialised weights. "incremental": start from a registered
    # parent model's weights (parent_version, else the version of parent_alias), its tables grown
    # to the features' vocabulary, which must extend the parent's (featurize.vocab_mode=extend,
    # featurize.vocab_from=<the parent's features>). No parent, or a parent of another shape
    # (embedding_dim, num_layers, ...): a log line, then full training.
    mode: Literal["full", "incremental"] = "full"
    parent_alias: str = "champion"
    parent_version: int = 0
    # Incremental: train on the windows whose last target comes after the parent's last one,
    # plus this many older windows drawn at random (seeded by train.seed): the replay that keeps
    # what the parent learnt (ADER's exemplar replay used 30k). 0 = the new windows alone
    # (plain fine-tuning, which forgets). More than the older windows there are is an error.
    replay_windows: int = 30000
    # Every run logs AdamW's moments after its last step (training/optimizer_moments.pt, twice
    # the weights' size), and an incremental run continues its parent's (grown tables' new rows
    # start at zero); false: neither, an incremental run's optimiser starts fresh.
    warm_optimizer: bool = True
    # The training windows read (a folder laid out as features/train); empty = <paths.features>/train.
    # train.mode=incremental sets it to the selection it writes under <paths.checkpoints>.
    windows_path: str = ""
    # The training budget, in optimiser steps (each: batch_size windows over all ranks). Training
    # ends at it (in mid-pass if need be) or earlier, when the learning rate's cool-down after a
    # validation plateau has run out (lr_schedule=wsd). A budget in steps fits any data size.
    max_steps: int = 3000
    # At most this many passes over the training windows (a cap; the budget is max_steps).
    epochs: int = 100
    # Validate (and decide early stopping) every this many steps and at the end of every pass;
    # 0: at the end of every pass only. Checkpoints for train.resume are written at pass ends.
    eval_every_steps: int = 500
    # Validation ranks at most this many users (a seeded sample of features/validation): under
    # evaluate.protocol=leave_last_out nearly every user is a validation user. Each evaluation logs
    # the 95% half-width of its NDCG and of its paired difference to the best so far: gains
    # smaller than those are noise.
    validation_users: int = 20000
    # Windows per optimiser step over ALL ranks (each rank takes batch_size / its world size, which
    # must divide it): 1 and N ranks then run the same recipe (same batch, same learning rate,
    # same steps); no learning-rate scaling by the world size.
    batch_size: int = 128
    lr: float = 0.003
    weight_decay: float = 0.01
    warmup_steps: int = 10
    # After the warm-up:
    #   "wsd" (warm-up, stable, decay): the peak rate until validation plateaus (patience) or the
    #     budget's last cooldown_share is reached, then a linear cool-down to min_lr_ratio x the
    #     peak over cooldown_share x the steps taken so far, after which training stops. The
    #     decay happens within the run that actually happens, however short (Hägele et al. 2024,
    #     "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
    #   "cosine": a half cosine to min_lr_ratio over the budget (plateau cuts: plateau_decays);
    #   "constant": the peak throughout (plateau cuts: plateau_decays).
    lr_schedule: Literal["wsd", "constant", "cosine"] = "wsd"
    min_lr_ratio: float = 0.05
    cooldown_share: float = 0.2
    # The global gradient norm is clipped to this; 0 = no clipping.
    grad_clip: float = 1.0
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    # "full": cross-entropy over every item of the catalogue (no sampling, no correction: SASRec
    # with cross-entropy); "sampled": the in-batch targets plus uniform_negatives uniform draws,
    # logQ-corrected (train/loss.py); "auto": full up to full_softmax_max_items items. The full
    # loss's logits take batch x steps x items floats (with their gradient ~2.2 GB per rank at
    # 50,000 items and the default batch, ~0.5 GB at 10,000) and its step ~2x the sampled one's
    # at 10,000 items, ~11x at 50,000 (benchmarks/loss_bench.py, RESULTS.md).
    loss: Literal["auto", "full", "sampled"] = "auto"
    full_softmax_max_items: int = 20000
    uniform_negatives: int = 256
    # Each position predicts a step drawn from its next `target_horizon` steps (1 = the next
    # item). 1 led 10 on validation under both protocols and on every shape measured
    # (benchmarks/RESULTS.md, "The model's recipe"), the temporal one included.
    target_horizon: int = 1
    # Where the drawn step starts: "next_step" (the next click, then the horizon) or
    # "next_visit": the first step after the next gap of at least visit_gap_s, which trains the
    # user vector for what a batch recommendation serves, the user's next visit (positions
    # with no later visit in the window predict nothing).
    target_start: Literal["next_step", "next_visit"] = "next_step"
    visit_gap_s: int = 1800
    # Drop targets the user already met earlier in the window, as evaluation excludes seen items.
    skip_seen_targets: bool = True
    # The loss weight of a target by its event type. Equal by default: weighting carts and
    # purchases up (2 and 3) did not help validation NDCG (benchmarks/RESULTS.md, "The model's
    # recipe"); keep weights only where your own data shows they help.
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 1.0, "remove_from_cart": 1.0, "purchase": 1.0}
    )
    # Validation NDCG@eval_k / Recall@eval_k, computed every epoch over the whole catalogue.
    eval_k: int = 20
    # A plateau: `patience` evaluations without a validation NDCG gain above `min_delta` (patience
    # 0 = none), and either `patience_steps` steps since the best or the latest evaluation below
    # the best by more than the 95% half-width of their paired difference (a real decline: the
    # model overfits). Under wsd a plateau starts the cool-down; under cosine/constant it cuts
    # the rate (plateau_decays) or stops. The best evaluation's weights are kept either way.
    # Counting steps, or asking for a significant decline, keeps a run of short passes (an
    # evaluation at every pass end) from stopping on the noise of a few evaluations.
    patience: int = 4
    patience_steps: int = 300
    min_delta: float = 0.0
    # Before stopping, a plateau (patience evaluations without a gain) first multiplies the
    # learning rate by plateau_factor, up to plateau_decays times: the decay then comes when the
    # data call for it, whatever the budget (a cosine over 3,000 steps barely decays by the time
    # early stopping ends a run on small data: the demo stopped at step 384 with the rate at 97%
    # of its peak and test NDCG@20 0.1767, against 0.1858 with a decay).
    plateau_decays: int = 1
    plateau_factor: float = 0.1
    # Add user features derived (causally) from the history itself to the user tower. Off by
    # default, like interest_pooling: neither path helped validation NDCG on any shape measured
    # (benchmarks/RESULTS.md, "The model's recipe"), so the default is the plain SASRec tower.
    user_features: bool = False
    # Add the running mean of the history's item vectors (a direct path for long-term taste).
    interest_pooling: bool = False
    # How evaluation and scoring turn the tower's vector after every history step into item
    # scores: "mixture" (each real step's vector gives a softmax over the items the user may
    # still get; an item scores the log of their mean: several interests stay apart), "mean"
    # (one dot product with the mean vector: what an ANN index can serve), or "last" (the last
    # step's vector, as SASRec). Training is the same for all three (benchmarks/RESULTS.md).
    # "auto": validate with the mixture while training, then rank the validation users with the
    # best weights in all three ways and keep the best (under leave_last_out, whose target is
    # the very next new item, "last" led on every generated regime; on the demo's temporal
    # split the mixture led).
    user_vector: Literal["auto", "last", "mean", "mixture"] = "auto"
    seed: int = 7

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first value out of range (types are checked by from_dict)."""
        for key in ("num_proc", "threads_per_proc", "start_timeout_s", "max_steps", "epochs", "validation_users",
                    "batch_size", "embedding_dim", "num_layers", "num_heads", "target_horizon", "eval_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_every_steps", "warmup_steps", "uniform_negatives", "patience", "plateau_decays",
                    "visit_gap_s", "parent_version", "replay_windows", "patience_steps", "full_softmax_max_items"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.mode == "incremental" and not (self.parent_version or self.parent_alias):
            raise ConfigError("train.mode=incremental: train.parent_alias is empty and train.parent_version is 0: "
                              "name the model to start from")
        if self.horovod_cycle_time_ms < 0:
            raise ConfigError(f"train.horovod_cycle_time_ms must be >= 0, got {self.horovod_cycle_time_ms}")
        if self.lr < 0:  # 0 freezes the weights (tests of early stopping use it)
            raise ConfigError(f"train.lr must be >= 0, got {self.lr}")
        if not 0 < self.plateau_factor <= 1:
            raise ConfigError(f"train.plateau_factor must lie in (0, 1], got {self.plateau_factor}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}: a negative "
                              "norm would turn descent into ascent")
        if not 0 < self.cooldown_share <= 1:
            raise ConfigError(f"train.cooldown_share must lie in (0, 1], got {self.cooldown_share}")
        if self.batch_size % self.num_proc:
            raise ConfigError(f"train.batch_size ({self.batch_size}) is the batch over all ranks: it must be a "
                              f"multiple of train.num_proc ({self.num_proc})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"train.dropout must lie in [0, 1), got {self.dropout}")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"train.embedding_dim ({self.embedding_dim}) must be a multiple of train.num_heads "
                              f"({self.num_heads})")


@dataclass(frozen=True)
class SearchConfig:
    """The opt-in hyper-parameter search of the train stage (train/search.py): Optuna's TPE
    sampler draws train settings from ``space``, each trial a training run scored on validation
    (the best NDCG@train.eval_k of its run), and the stage then trains its model with the best."""

    # Trials before the final training (each a whole training run); 0 = no search, the default.
    trials: int = 0
    # Bound on the whole search (Optuna's timeout): no trial starts after it, one under way
    # finishes. Below spark.stage_timeout_minutes: the final training runs in the same stage.
    timeout_minutes: float = 360.0
    # Seeds the sampler: the same seed, space and data draw the same trials.
    seed: int = 23
    # train key -> [low, high] (a uniform range, real or integer by the key's type), [low, high,
    # log] (log-uniform, low > 0), or the choices: three or more integers, or the values of a
    # true/false or text key (two numbers are always a range). A value the train section refuses
    # in combination (embedding_dim not a multiple of num_heads) prunes its trial.
    space: dict[str, list[Any]] = field(default_factory=lambda: {
        "lr": [0.0003, 0.006, "log"],
        "dropout": [0.0, 0.4],
        "embedding_dim": [32, 64, 128],
        "max_steps": [1500, 6000],  # half to twice train.max_steps' default
    })

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first setting out of range or entry of ``space`` of neither
        form (types are checked by from_dict; the space's values against the train section by
        load_config)."""
        if self.trials < 0:
            raise ConfigError(f"search.trials must be >= 0, got {self.trials}")
        _bounded_waits("search", self, ("timeout_minutes",))
        if self.trials and not self.space:
            raise ConfigError(f"search.space names no train key to search (search.trials={self.trials})")
        # Parsed, each value of its key's type (YAML reads `1e-3` as text): what is logged is what is searched.
        object.__setattr__(self, "space", {d.key: d.spec for d in parse_space(self.space)})


@dataclass(frozen=True)
class SearchDimension:
    """One entry of ``search.space``, parsed: a range of ``train.<key>`` or its choices."""

    key: str
    kind: Literal["float", "int", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> list[Any]:
        """The entry of ``search.space`` that this was parsed from, its values typed."""
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high, "log"] if self.log else [self.low, self.high]

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values every draw lies between (low, high) or among (the choices)."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


# Train keys a search may not vary, and why.
NOT_SEARCHABLE = {
    "eval_k": "it sets the objective (validation NDCG@train.eval_k), which must compare across trials",
    "resume": "every trial and the final training start from scratch",
}


def parse_space(space: Mapping[str, Any]) -> list[SearchDimension]:
    """Parse ``search.space`` (the format: see :class:`SearchConfig`).

    Raises:
        ConfigError: naming ``search.space.<key>``: not a train key (with a did-you-mean), a key
            that cannot be searched, or a list that is neither a range nor choices of its type.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    dimensions = []
    for key, spec in space.items():
        name = f"search.space.{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean 'search.space.{close[0]}'?)" if close else ""
            raise ConfigError(f"{name}: the train section has no key {key!r}{hint}")
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"{name}: train.{key} cannot be searched: {NOT_SEARCHABLE[key]}")
        hint = _resolve(TrainConfig, fields[key])
        if not isinstance(spec, list) or not spec:
            raise ConfigError(f"{name}: expected a list ([low, high], [low, high, log] or the choices), got "
                              f"{_describe(spec)}")
        numeric = hint in (int, float)
        log_scale = numeric and len(spec) == 3 and spec[2] == "log"
        bounds = spec[:2] if log_scale else spec
        if hint is float or (hint is int and len(bounds) == 2):
            if len(bounds) != 2:
                raise ConfigError(f"{name}: train.{key} is a real number: give a range [low, high] or [low, high, "
                                  f"log], got {spec!r}")
            low, high = (_check(f"{name}[{i}]", value, hint) for i, value in enumerate(bounds))
            if not low < high:
                raise ConfigError(f"{name}: the range's low ({low}) must be below its high ({high})")
            if log_scale and not low > 0:
                raise ConfigError(f"{name}: a log range needs low > 0, got {low}")
            dimensions.append(SearchDimension(key, "int" if hint is int else "float", low, high, log_scale))
        elif numeric or hint in (bool, str) or typing.get_origin(hint) is Literal:
            choices = [_check(f"{name}[{i}]", value, hint) for i, value in enumerate(spec)]
            if len(choices) < 2 or len(set(choices)) != len(choices):
                raise ConfigError(f"{name}: give at least two different choices (or a range [low, high] of a "
                                  f"number), got {spec!r}")
            dimensions.append(SearchDimension(key, "choice", choices=tuple(choices)))
        else:
            kind = {dict: "a mapping", list: "a list"}.get(typing.get_origin(hint), repr(hint))
            raise ConfigError(f"{name}: train.{key} is {kind}; only numbers, true/false and text keys can be "
                              "searched")
    return dimensions
