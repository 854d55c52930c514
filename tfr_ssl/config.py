"""Typed configuration for every stage of the pipeline.

One default `Config()` describes the embedded demo; experiments override single
fields (`config.override({"ssl.alpha": 0.3})`) rather than repeating literals.
Every field carries its help text in `metadata["help"]`, which the binaries turn
into absl flags, so a field documented here is a flag there. A numeric field
also carries its range (`metadata["bounds"]`, a `Bounds`; every float must
be finite). That declaration is the only copy of the rule: the config check
(`check`), the flags (which refuse a value out of range when parsed) and the
layers that take a value (`check_value`) all read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
  """A setting out of its range; `path` is its dotted config name."""

  def __init__(self, path: str, message: str):
    self.path = path
    self.reason = message
    super().__init__(f"{path}: {message}")


@dataclasses.dataclass(frozen=True)
class Bounds:
  """The range of a numeric config field (of each value, for a tuple field).

  Declared once, in the field's metadata, and read by the config check, the
  binaries' flags and the layers that take the value (`check_value`). A
  float must also be finite, bounded or not: `inf` passes `> 0` and turns
  every loss into NaN.

  Attributes:
    low: Lowest value (None: unbounded below).
    high: Highest value (None: unbounded above).
    low_open: `low` itself is excluded.
    high_open: `high` itself is excluded.
    min_items: A tuple field needs at least this many values.
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  min_items: int = 0

  def describe(self, is_float: bool) -> str:
    """The range in words: `in [0, 1)`, `>= 1`, `a finite number > 0`."""
    if self.low is not None and self.high is not None:
      left, right = "(["[not self.low_open], ")]"[not self.high_open]
      return f"in {left}{self.low:g}, {self.high:g}{right}"
    ends = []
    if self.low is not None:
      ends.append(f"{'>' if self.low_open else '>='} {self.low:g}")
    if self.high is not None:
      ends.append(f"{'<' if self.high_open else '<='} {self.high:g}")
    if is_float:
      ends.insert(0, "a finite number")
    return " ".join(ends)

  def contains(self, value: float) -> bool:
    """Whether one value is in the range (finite, if a float)."""
    # Any float type (numpy's too); a Python int is finite (and may be too
    # large for a float).
    if not isinstance(value, int) and not math.isfinite(value):
      return False
    if self.low is not None and not (
      value > self.low if self.low_open else value >= self.low
    ):
      return False
    return self.high is None or (
      value < self.high if self.high_open else value <= self.high
    )


# The ranges the fields below share.
AT_LEAST_0 = Bounds(low=0)
AT_LEAST_1 = Bounds(low=1)
POSITIVE = Bounds(low=0, low_open=True)
# A probability of dropping or masking: 1 would leave nothing.
RATE = Bounds(low=0, high=1, high_open=True)
# A share that must keep something: 0 would keep nothing.
SHARE = Bounds(low=0, high=1, low_open=True)
# Every float field without a declared range: finite, nothing more.
FINITE = Bounds()


def _field(
  default: Any,
  help_text: str,
  choices: typing.Iterable[str] | None = None,
  bounds: Bounds | None = None,
) -> Any:
  """A dataclass field with help text, and its choices or its range."""
  metadata: dict[str, Any] = {"help": help_text}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  if bounds is not None:
    metadata["bounds"] = bounds
  if isinstance(default, (list, tuple)):
    return dataclasses.field(
      default_factory=lambda: tuple(default), metadata=metadata
    )
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class SyntheticConfig:
  """The embedded synthetic source (see data/README.md for the model).

  Attributes:
    num_items: Items in the corpus.
    num_users: Users (queries).
    num_interactions: Interactions drawn before de-duplication.
    zipf_exponent: Exponent of the Zipf-like item popularity.
    num_topics: Latent topics that users and categories load on.
    seed: Seed of the generator; the same seed gives the same files.
  """

  num_items: int = _field(
    20_000, "Items in the synthetic corpus.", bounds=AT_LEAST_1
  )
  num_users: int = _field(
    20_000, "Users in the synthetic data.", bounds=AT_LEAST_1
  )
  num_interactions: int = _field(
    1_000_000, "Synthetic interactions to draw.", bounds=AT_LEAST_1
  )
  zipf_exponent: float = _field(
    1.1, "Zipf exponent of item popularity.", bounds=POSITIVE
  )
  num_topics: int = _field(
    32, "Latent topics of the synthetic generator.", bounds=AT_LEAST_1
  )
  seed: int = _field(0, "Seed of the synthetic generator.", bounds=AT_LEAST_0)


@dataclasses.dataclass
class DataConfig:
  """Which data, how it is split, and where prepared data is cached.

  Attributes:
    source: `synthetic`, `movielens` or `csv`.
    data_dir: Directory of the raw files (movielens, csv).
    cache_dir: Root of the TFDS cache of prepared datasets.
    min_rating: MovieLens ratings at or above this count as positives.
    split: `random` holdout by interaction or `temporal` by timestamp.
    validation_fraction: Share of interactions held out for validation.
    test_fraction: Share of interactions held out for test.
    train_fraction: Uniform share of the training split that is kept.
    seed: Seed of the split and of the train_fraction subsample.
    heldout_users: Share of the users with at least 5 interactions whose
      whole history stays out of training, validation and test; the test
      evaluation folds in the first 80% of each one's interactions as
      history and scores the rest (Liang et al. 2018's strong
      generalisation). Seeded by `seed`; chosen after the split, so the
      other users' splits do not move with it.
    synthetic: Settings of the synthetic source.
  """

  source: str = _field(
    "synthetic", "Data source.", choices=("synthetic", "movielens", "csv")
  )
  data_dir: str = _field("", "Directory of raw files (movielens, csv).")
  cache_dir: str = _field(
    "~/.cache/tfr_ssl", "Root directory of the prepared-data cache."
  )
  min_rating: float = _field(
    4.0, "MovieLens: ratings >= this value are positives."
  )
  split: str = _field("random", "Split kind.", choices=("random", "temporal"))
  validation_fraction: float = _field(0.1, "Validation share.", bounds=RATE)
  test_fraction: float = _field(0.1, "Test share.", bounds=RATE)
  train_fraction: float = _field(
    1.0,
    "Keep this uniform share of the training split (sparsity study).",
    bounds=SHARE,
  )
  seed: int = _field(
    0,
    "Seed of the split and the train_fraction subsample (not of training).",
    bounds=AT_LEAST_0,
  )
  heldout_users: float = _field(
    0.1,
    "Share of the users with at least 5 interactions held out of training "
    "entirely and evaluated from a folded-in history (0 = none).",
    bounds=Bounds(low=0, high=0.5),
  )
  synthetic: SyntheticConfig = dataclasses.field(
    default_factory=SyntheticConfig
  )


@dataclasses.dataclass
class ModelConfig:
  """The two towers and the main retrieval task.

  Attributes:
    task: `user_to_item` (query tower over query features) or `item_to_item`
      (query tower over the previous item's features through the shared item
      encoder, the paper's main task).
    embedding_dim: Width of every feature embedding table.
    query_layers: Hidden layer widths of the query tower MLP.
    item_layers: Hidden layer widths of the item tower MLP.
    output_dim: Width of the L2-normalised tower outputs.
    temperature: Softmax temperature on cosine scores.
    loss: `softmax` (listwise in-batch), `pointwise` or `pairwise`.
    pairwise_loss: `logistic` or `hinge` for the pairwise loss.
    margin: Margin of the hinge pairwise loss (in cosine units).
    logq: Sampling-bias correction: `none`, `static` (training counts) or
      `streaming` (Yi et al. 2019 estimator). Static by default: on a fixed
      training set the counts are the exact sampling probabilities, while
      the streaming estimator needs many steps to converge (measured at
      10% of ML-1M, about 100 steps to the best epoch: validation
      Recall@10 0.044 static vs 0.038 streaming, most-popular 0.041;
      bench/results/tune.md). Streaming is for logs that never end.
    estimator_buckets: Hash buckets of the streaming estimator.
    estimator_hashes: Hash functions (1 = Algorithm 2, >1 = Algorithm 3).
    estimator_lr: Learning rate `a` of the streaming estimator.
    remove_accidental_hits: Drop in-batch negatives with the positive's id.
    hard_negatives: Keep only this many hardest negatives per row (0 = all).
    mixed_negatives: Extra negatives per batch drawn from the corpus.
    mixed_negative_sampling: `uniform` or `unigram` (count^beta).
    mixed_negative_beta: Exponent beta of the unigram distribution.
    feature_dropout: DropoutNet-style baseline: drop each item feature of a
      training example with this rate.
    spread_out_weight: Weight of the spread-out regulariser on item
      embeddings (Zhang et al. 2017); 0 disables it.
    id_dropout: Rate at which a training example's item id (and key-like
      features) is replaced by its default embedding in the main task, so
      the item tower also learns to embed an item from its content alone,
      as it must for an item with no training interactions. 0.1 by
      default (validation grid {0, 0.1, 0.2}, bench/results/tune.md).
    value_dropout: Rate at which each content (non-key) feature of a
      training example's item and query is replaced by its unknown
      embedding in the main task, so that embedding (which an empty bag, a
      value never seen in training and a masked feature all read) is
      trained. 0.02 by default (validation, bench/results/tune.md: a small
      rate trains the unknown embedding; 0.1 cost 2.8% Recall@10 on
      synthetic full data).
    query_id_dropout: Rate at which a training example's query id (the
      user id) is replaced by its unknown embedding, the one a user with
      no training interactions reads (the query-side cold rule). 0.05 by
      default (validation, bench/results/tune.md: 0.3 cost 6.1% Recall@10
      on synthetic full data).
    history_length: User-to-item: the query tower also reads the user's
      last N interacted items, embedded by the item tower's own tables
      (0 = the query is the user's features and id only). 20 by default:
      on validation, 20 serves held-out users 9-25% better than 10 at
      whole data, and seen users equally (bench/results/tune.md).
    history_pooling: How the history's item embeddings are pooled: `mean`,
      or `recency` (a learned weight per position, most recent first,
      renormalised over the positions present).
    training_history: How a training example's history is drawn from the
      user's training items (never the example itself, never a held-out
      interaction): `before` (the items before it), `others` (the user's
      latest N items but itself: the history its user is evaluated with)
      or `auto` (`before` for a temporal split, `others` for a random
      one; see `data/history.py`).
    query_id: Whether the query tower reads the user id: `on` (with
      `query_id_dropout`) or `off` (always its unknown embedding: the user
      is its features and history).
  """

  task: str = _field(
    "user_to_item", "Main task.", choices=("user_to_item", "item_to_item")
  )
  embedding_dim: int = _field(64, "Feature embedding width.", bounds=AT_LEAST_1)
  query_layers: tuple[int, ...] = _field(
    (256,), "Query MLP hidden widths.", bounds=AT_LEAST_1
  )
  item_layers: tuple[int, ...] = _field(
    (256,), "Item MLP hidden widths.", bounds=AT_LEAST_1
  )
  output_dim: int = _field(64, "Tower output width.", bounds=AT_LEAST_1)
  temperature: float = _field(
    0.05, "Main-task softmax temperature.", bounds=POSITIVE
  )
  loss: str = _field(
    "softmax", "Main loss.", choices=("softmax", "pointwise", "pairwise")
  )
  pairwise_loss: str = _field(
    "logistic", "Pairwise loss form.", choices=("logistic", "hinge")
  )
  margin: float = _field(
    0.1, "Hinge margin of the pairwise loss.", bounds=AT_LEAST_0
  )
  logq: str = _field(
    "static",
    "Sampling-bias correction.",
    choices=("none", "static", "streaming"),
  )
  estimator_buckets: int = _field(
    1 << 18,
    "Hash buckets of the streaming frequency estimator.",
    bounds=AT_LEAST_1,
  )
  estimator_hashes: int = _field(
    1,
    "Hash functions of the streaming estimator (>1: multi-hash).",
    bounds=AT_LEAST_1,
  )
  estimator_lr: float = _field(
    0.01, "Learning rate of the estimator.", bounds=SHARE
  )
  remove_accidental_hits: bool = _field(
    True, "Remove in-batch negatives that share the positive's item id."
  )
  hard_negatives: int = _field(
    0, "Keep only the k hardest negatives per row (0 = all).", bounds=AT_LEAST_0
  )
  mixed_negatives: int = _field(
    0,
    "Extra corpus negatives per batch (mixed negative sampling).",
    bounds=AT_LEAST_0,
  )
  mixed_negative_sampling: str = _field(
    "uniform",
    "Distribution of mixed negatives.",
    choices=("uniform", "unigram"),
  )
  mixed_negative_beta: float = _field(
    0.75,
    "Exponent of count^beta for unigram mixed negatives.",
    bounds=AT_LEAST_0,
  )
  feature_dropout: float = _field(
    0.0, "Baseline: item feature dropout rate (DropoutNet style).", bounds=RATE
  )
  spread_out_weight: float = _field(
    0.0, "Baseline: spread-out regulariser weight (0 = off).", bounds=AT_LEAST_0
  )
  id_dropout: float = _field(
    0.1, "Main task: rate of replacing the item id by its default.", bounds=RATE
  )
  value_dropout: float = _field(
    0.02,
    "Main task: rate of replacing each item and query content feature by "
    "its unknown embedding.",
    bounds=RATE,
  )
  query_id_dropout: float = _field(
    0.05,
    "Main task: rate of replacing the query id by its unknown embedding.",
    bounds=RATE,
  )
  history_length: int = _field(
    20,
    "User-to-item: last N items of the user's history read by the query "
    "tower (0 = id and features only).",
    bounds=AT_LEAST_0,
  )
  history_pooling: str = _field(
    "mean",
    "Pooling of the history's item embeddings.",
    choices=("mean", "recency"),
  )
  query_id: str = _field(
    "on", "Query tower reads the user id.", choices=("on", "off")
  )
  training_history: str = _field(
    "auto",
    "A training example's history: the user's items before it, or the "
    "user's latest items but itself (what a random split evaluates); auto "
    "= before for a temporal split, others for a random one.",
    choices=("auto", "before", "others"),
  )


@dataclasses.dataclass
class SSLConfig:
  """The self-supervised item task (Yao et al. 2021).

  Attributes:
    alpha: Weight of the SSL loss; 0 trains the main task only. 0.3 from
      the validation grid {0, 0.1, 0.3, 1} (bench/results/tune.md): 1 let
      the SSL gradient dominate the shared item tower.
    masking: `none`, `random` (independent per feature), `rfm`
      (complementary random halves) or `cfm` (correlated by a
      bias-corrected, normalised dependence; see docs/architecture.md).
    mask_rate: Masking rate of `random` masking.
    dropout_rate: Rate at which values of multi-valued features are dropped.
    temperature: Temperature of the contrastive softmax.
    batch_size: Items per SSL batch, drawn uniformly from the corpus.
    key_mode: The item id (and key-like features) in the two views:
      `one_view` (visible in one view per item, chosen at random) or
      `both` (masked in both views).
    key_share: A single-valued item feature with at least this many
      distinct values per corpus item is key-like (treated as the id).
    projection_dim: Width of the SSL projection head (two dense layers on
      the item embedding, used by the SSL loss only); 0 = no head, the SSL
      loss acts on the retrieval embedding itself.
    dependence: How CFM measures feature dependence: `corrected` (plug-in
      MI minus a shuffled-column baseline, normalised by sqrt(H_a H_b);
      `stats.feature_dependence`) or `raw_mi` (the paper's plug-in MI).
    user_alpha: Weight (beta) of the user-side SSL task: two disjoint
      random halves of a uniformly sampled user's training history, with
      the user id masked, pulled together through the query tower (needs
      `model.history_length > 0`); 0 = off.
  """

  alpha: float = _field(
    0.3, "SSL loss weight (0 = main task only).", bounds=AT_LEAST_0
  )
  masking: str = _field(
    "cfm",
    "Feature masking of the two views.",
    choices=("none", "random", "rfm", "cfm"),
  )
  mask_rate: float = _field(
    0.5, "Per-feature rate of random masking.", bounds=RATE
  )
  dropout_rate: float = _field(
    0.3, "Dropout rate of values in multi-valued features.", bounds=RATE
  )
  temperature: float = _field(0.1, "SSL softmax temperature.", bounds=POSITIVE)
  batch_size: int = _field(
    512, "Items per SSL batch (uniform over corpus).", bounds=AT_LEAST_1
  )
  key_mode: str = _field(
    "one_view",
    "Item id in the SSL views: visible in one view at random, or masked "
    "in both.",
    choices=("one_view", "both"),
  )
  key_share: float = _field(
    0.5,
    "Distinct values per item from which a feature counts as a key.",
    bounds=SHARE,
  )
  projection_dim: int = _field(
    0, "Width of the SSL projection head (0 = none).", bounds=AT_LEAST_0
  )
  dependence: str = _field(
    "corrected",
    "CFM's feature dependence: bias-corrected normalised MI, or the "
    "paper's raw plug-in MI.",
    choices=("corrected", "raw_mi"),
  )
  user_alpha: float = _field(
    0.0,
    "User-side SSL loss weight (beta; 0 = off).",
    bounds=AT_LEAST_0,
  )


@dataclasses.dataclass
class TrainConfig:
  """The optimisation loop and its schedule.

  Attributes:
    batch_size: Interactions per main-task batch.
    learning_rate: Learning rate of the optimizer.
    optimizer: `adam` (default: on the synthetic data Adam at 0.003 reached
      twice the validation recall of the paper's Adagrad after one epoch,
      bench/results/ablation_id_query.md; embedding rows are updated when in the
      batch, catching up the updates they sat out, see optimizers.py),
      `adam_dense` (Keras's Adam, whose step costs passes over every
      table) or `adagrad` (the paper).
    epochs: Passes over the training split.
    steps_per_epoch: Cap on steps per epoch (0 = one full pass).
    schedule: `joint` (the paper) or `pretrain` (SSL-only pretraining of the
      item tower first, then joint or main-only training).
    pretrain_steps: SSL-only steps of the `pretrain` schedule.
    checkpoint_every: Steps between checkpoints.
    log_every: Steps between progress and TensorBoard logs.
    steps_per_loop: Training steps run in one call of the compiled step
      function, so Python and the host sync once per call, not per step.
      Logs, checkpoints, epoch ends and phase changes still fall on their
      steps (a call stops there).
    validation_examples: Validation interactions scored at epoch ends
      (0 = all).
    warm_start_from: Workdir of an earlier run to initialise from.
    early_stopping_patience: Stop when validation Recall@10 has not
      improved for this many epochs (0 = never). The model of the best
      epoch is kept in WORKDIR/best/ either way, and exported by default.
    seed: Seed of initialisation, shuffling and augmentation.
  """

  batch_size: int = _field(1024, "Main-task batch size.", bounds=AT_LEAST_1)
  learning_rate: float = _field(
    0.003, "Optimizer learning rate.", bounds=POSITIVE
  )
  optimizer: str = _field(
    "adam", "Optimizer.", choices=("adam", "adam_dense", "adagrad")
  )
  epochs: int = _field(3, "Training epochs.", bounds=AT_LEAST_1)
  steps_per_epoch: int = _field(
    0, "Steps per epoch cap (0 = full pass).", bounds=AT_LEAST_0
  )
  schedule: str = _field(
    "joint", "Training schedule.", choices=("joint", "pretrain")
  )
  pretrain_steps: int = _field(
    0, "SSL-only pretraining steps.", bounds=AT_LEAST_0
  )
  checkpoint_every: int = _field(
    200, "Steps between checkpoints.", bounds=AT_LEAST_1
  )
  log_every: int = _field(50, "Steps between logs.", bounds=AT_LEAST_1)
  steps_per_loop: int = _field(
    20,
    "Training steps per call of the compiled step function (fewer Python "
    "round trips; logs, checkpoints and epoch ends keep their steps).",
    bounds=AT_LEAST_1,
  )
  validation_examples: int = _field(
    20_000,
    "Validation pairs scored at epoch ends (0 = all).",
    bounds=AT_LEAST_0,
  )
  warm_start_from: str = _field(
    "", "Workdir of an earlier run to warm-start from."
  )
  early_stopping_patience: int = _field(
    0,
    "Stop after this many epochs without a better validation recall@10.",
    bounds=AT_LEAST_0,
  )
  seed: int = _field(
    0,
    "Seed of the run: initialisation, shuffling, augmentation (not of "
    "the split).",
    bounds=AT_LEAST_0,
  )


@dataclasses.dataclass
class EvalConfig:
  """Full-corpus evaluation.

  Attributes:
    ks: Cut-offs of Recall@K and MAP@K.
    head_fraction: Share of most frequent training items called head.
    split: Split to evaluate (`validation` or `test`).
    batch_size: Queries scored per matmul batch.
    sparse_user_max: Users with at most this many training interactions
      form the `sparse` user slice.
  """

  ks: tuple[int, ...] = _field(
    (10, 50, 100), "Recall/MAP cut-offs.", bounds=Bounds(low=1, min_items=1)
  )
  head_fraction: float = _field(
    0.1, "Most frequent share called head.", bounds=Bounds(low=0, high=1)
  )
  split: str = _field(
    "test", "Split to evaluate.", choices=("validation", "test")
  )
  batch_size: int = _field(
    1024, "Queries per scoring batch.", bounds=AT_LEAST_1
  )
  sparse_user_max: int = _field(
    3,
    "Users with at most this many training interactions are `sparse`.",
    bounds=AT_LEAST_0,
  )


@dataclasses.dataclass
class IndexConfig:
  """The item index: exact search or ScaNN, chosen by measuring.

  `pipelines.build_index` measures on the corpus at hand which index to
  serve (`tfr_ssl/index/choice.py`): on sample queries it tunes ScaNN's
  leaves_to_search for each of a few reordering depths, then times those
  candidates and exact search on held-out queries. The fastest ScaNN
  search whose held-out recall@10 against exact search reaches
  `recall_floor` wins if it is clearly faster than exact search (1.1x);
  otherwise exact search wins.

  Attributes:
    k: Neighbours the retrieval model returns.
    exact_below: Corpora smaller than this use exact (brute-force) search
      without measuring.
    num_leaves: Tree leaves (0 = about sqrt(n)).
    leaves_to_search: Leaves searched per query (0 = measured).
    reorder: Candidates re-scored exactly (0 = measured). Runs saved
      before the measured choice hold the old default, 10000, which they
      keep; pass 0 to measure.
    quantization_threshold: Anisotropic quantization threshold `T`.
    audit_queries: Sampled queries for the recall audit against exact,
      and as many others to choose the index on (half tune, half measure).
    recall_floor: Recall@10 against exact search (on held-out queries)
      that a ScaNN index must reach to be chosen.

  A non-zero num_leaves, leaves_to_search or reorder is an explicit
  setting: it is used as given, and asks for ScaNN (exact search is then
  not a candidate; `exact_below` still applies). Only the ScaNN settings
  left at 0 are measured.
  """

  k: int = _field(100, "Neighbours returned by the index.", bounds=AT_LEAST_1)
  exact_below: int = _field(
    20_000,
    "Use exact search, without measuring, for corpora smaller than this.",
    bounds=AT_LEAST_0,
  )
  num_leaves: int = _field(
    0,
    "ScaNN tree leaves (0 = ~sqrt(n); non-zero asks for ScaNN).",
    bounds=AT_LEAST_0,
  )
  leaves_to_search: int = _field(
    0,
    "ScaNN leaves searched (0 = measured; non-zero asks for ScaNN).",
    bounds=AT_LEAST_0,
  )
  reorder: int = _field(
    0,
    "ScaNN exact re-scoring candidates (0 = measured; non-zero asks for "
    "ScaNN).",
    bounds=AT_LEAST_0,
  )
  quantization_threshold: float = _field(
    0.2, "ScaNN anisotropic quantization threshold.", bounds=AT_LEAST_0
  )
  audit_queries: int = _field(
    1000,
    "Queries sampled for the recall audit (and as many to choose the "
    "index on).",
    bounds=AT_LEAST_1,
  )
  recall_floor: float = _field(
    0.95,
    "Held-out recall@10 against exact search a ScaNN index needs to be "
    "chosen over exact search.",
    bounds=Bounds(low=0, high=1),
  )


@dataclasses.dataclass
class Config:
  """Everything a run needs; serialised as WORKDIR/config.json."""

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  ssl: SSLConfig = dataclasses.field(default_factory=SSLConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  index: IndexConfig = dataclasses.field(default_factory=IndexConfig)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> Config:
    return _from_dict(cls, values, path="")

  @classmethod
  def from_json(cls, text: str) -> Config:
    return cls.from_dict(json.loads(text))

  @classmethod
  def from_saved_json(cls, text: str) -> Config:
    """A run's saved config.json: a field it lacks takes the value runs
    had before the field existed (`BEFORE_FIELD`), not today's default,
    so an older run restores into the model it trained."""
    values = json.loads(text)
    missing = {}
    for key, value in BEFORE_FIELD.items():
      section, leaf = key.split(".")
      if isinstance(values, dict) and leaf not in values.get(section, {}):
        missing[key] = value
    return cls.from_dict(values).override(missing)

  def override(self, overrides: dict[str, Any]) -> Config:
    """Returns a copy with dotted keys (`"ssl.alpha"`) replaced.

    Raises:
      ValueError: an unknown key, or a value outside the field's choices.
    """
    values = self.to_dict()
    for key, value in overrides.items():
      node = values
      *parents, leaf = key.split(".")
      for part in parents:
        if not isinstance(node.get(part), dict):
          raise ValueError(f"Unknown config key {key!r}.")
        node = node[part]
      if leaf not in node or isinstance(node[leaf], dict):
        raise ValueError(f"Unknown config key {key!r}.")
      node[leaf] = value
    return Config.from_dict(values)


# What a field meant in runs saved before it existed: the history query
# tower, held-out users and the CFM dependence arrived together, and a run
# without them had an id-only query tower and every user in training.
BEFORE_FIELD = {
  "model.history_length": 0,
  "model.training_history": "auto",
  "data.heldout_users": 0.0,
  "ssl.dependence": "corrected",
  "ssl.user_alpha": 0.0,
}


def fields_of(cls: type) -> list[tuple[str, dataclasses.Field, Any]]:
  """Flattens a config class to (dotted name, field, resolved type) rows."""
  rows = []
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    kind = hints[field.name]
    if dataclasses.is_dataclass(kind):
      for name, sub, sub_kind in fields_of(kind):
        rows.append((f"{field.name}.{name}", sub, sub_kind))
    else:
      rows.append((field.name, field, kind))
  return rows


def bounded_fields() -> dict[str, tuple[Bounds, Any]]:
  """Dotted name -> (range, type) of every field with a range.

  That is every field that declares `bounds`, and every float field (which
  must at least be finite).
  """
  found = {}
  for path, field, kind in fields_of(Config):
    bounds = field.metadata.get("bounds")
    if bounds is None and kind is float:
      bounds = FINITE
    if bounds is not None:
      found[path] = (bounds, kind)
  return found


def check_value(path: str, value: Any) -> None:
  """Refuses a value outside the declared range of the field `path`.

  The one rule for a field's range: the config check, the binaries' flags
  and the layers that take the value all call this.

  Raises:
    ConfigError: out of range (names the field, the range and the value);
      a KeyError for a field with no declared range.
  """
  bounds, kind = _BOUNDED[path]
  if typing.get_origin(kind) is tuple:
    item_kind = typing.get_args(kind)[0]
    values = tuple(value)
    if len(values) < bounds.min_items:
      plural = "s" if bounds.min_items > 1 else ""
      raise ConfigError(
        path, f"needs at least {bounds.min_items} value{plural}, got {values}"
      )
    if not all(bounds.contains(v) for v in values):
      what = bounds.describe(item_kind is float)
      raise ConfigError(path, f"every value must be {what}, got {values}")
    return
  if not bounds.contains(value):
    what = bounds.describe(kind is float)
    raise ConfigError(path, f"must be {what}, got {value}")


def check_split_fractions(
  validation_fraction: float, test_fraction: float, train_fraction: float
) -> None:
  """Refuses split fractions that leave no training split.

  Raises:
    ConfigError: a fraction out of its range, or validation and test that
      take everything.
  """
  check_value("data.validation_fraction", validation_fraction)
  check_value("data.test_fraction", test_fraction)
  check_value("data.train_fraction", train_fraction)
  if validation_fraction + test_fraction >= 1.0:
    raise ConfigError(
      "data.test_fraction",
      f"validation ({validation_fraction}) and test ({test_fraction}) "
      "fractions leave nothing to train on",
    )


def check_batch_split(path: str, batch_size: int, replicas: int) -> None:
  """Refuses a global batch that does not split evenly over the replicas.

  Raises:
    ConfigError: `batch_size` is not a multiple of `replicas`.
  """
  if batch_size % replicas:
    raise ConfigError(
      path,
      f"{batch_size} does not split evenly over {replicas} replicas: use a "
      f"multiple of {replicas}",
    )


def check(config: Config) -> None:
  """Refuses a config with a setting out of its range.

  Only what the config alone decides; what needs the data (e.g. enough
  content features for CFM) is checked by the model when it is built.

  Raises:
    ConfigError: the first setting out of range (names it and its value).
  """
  for path in _BOUNDED:
    value = config
    for part in path.split("."):
      value = getattr(value, part)
    check_value(path, value)
  data = config.data
  check_split_fractions(
    data.validation_fraction, data.test_fraction, data.train_fraction
  )


def _coerce(value: Any, kind: Any, path: str) -> Any:
  origin = typing.get_origin(kind)
  if origin is tuple:
    if isinstance(value, str):
      value = [v for v in value.split(",") if v.strip()]
    (item_kind, _) = typing.get_args(kind)
    return tuple(_coerce(v, item_kind, path) for v in value)
  if origin in (typing.Union, types.UnionType):
    return value
  try:
    if kind is bool and isinstance(value, str):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
      return value.lower() in ("true", "1")
    if kind is int and isinstance(value, float) and not value.is_integer():
      raise ValueError(value)
    return kind(value)
  except (TypeError, ValueError, OverflowError):
    raise ValueError(
      f"Config field {path!r} expects {kind.__name__}, got {value!r}."
    ) from None


def _from_dict(cls: type, values: dict[str, Any], path: str) -> Any:
  if not isinstance(values, dict):
    raise ValueError(f"Config section {path or '<root>'!r} must be a dict.")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    where = f" in section {path!r}" if path else ""
    raise ValueError(f"Unknown config keys{where}: {', '.join(unknown)}.")
  kwargs = {}
  for field in dataclasses.fields(cls):
    if field.name not in values:
      continue
    full = f"{path}.{field.name}" if path else field.name
    kind = hints[field.name]
    if dataclasses.is_dataclass(kind):
      kwargs[field.name] = _from_dict(kind, values[field.name], full)
      continue
    value = _coerce(values[field.name], kind, full)
    choices = field.metadata.get("choices")
    if choices and value not in choices:
      raise ValueError(
        f"Config field {full!r} must be one of {list(choices)}, got {value!r}."
      )
    kwargs[field.name] = value
  return cls(**kwargs)


# path -> (range, type), read by check_value.
_BOUNDED = bounded_fields()
