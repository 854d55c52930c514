"""The training loop: `train_and_evaluate(config, workdir)`.

One run owns one workdir (see docs/architecture.md, "The workdir contract"):
config.json, dataset.json (schema and vocabularies, for export and warm
start), checkpoints/, tensorboard/ and train_metrics.json.

Resumption: the checkpoint holds the model, the optimizer, the step and the
state of the input iterator, so rerunning the same command after a crash,
even `kill -9`, continues from the last checkpoint with the same batches it
would have seen.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time

import tensorflow as tf
import tf_keras

from tfr_ssl import atomic
from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, csv_source, history, pipeline, query_side
from tfr_ssl.evaluation import embed
from tfr_ssl.model import diagnostics, optimizers
from tfr_ssl.model import two_tower as model_lib
from tfr_ssl.model.two_tower import TwoTowerModel
from tfr_ssl.training import distribute, warm_start
from tfr_ssl.training import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG_FILE
DATASET_FILE = workdir_lib.DATASET_FILE
CHECKPOINT_DIR = workdir_lib.CHECKPOINT_DIR
# The model of the epoch with the best validation recall (see `SELECT_BY`).
BEST_DIR = "best"
BEST_PREFIX = "model"
SELECT_BY = "recall@10"

WorkdirError = workdir_lib.WorkdirError


class NonFiniteError(WorkdirError):
  """The loss or the weights stopped being finite: training stopped.

  No checkpoint is written after that step (see `_Run.stop_if_not_finite`).
  """


def train_and_evaluate(
  config: config_lib.Config,
  workdir: str,
  strategy: tf.distribute.Strategy | None = None,
) -> dict:
  """Trains (or resumes training) and validates at epoch ends.

  The workdir is locked for the whole run (tfr_ssl.training.workdir). Everything
  that can refuse the run (a setting out of range, a fixed setting changed,
  the data changed, a config the model or the data cannot take) is checked
  before config.json is written; a new workdir refused then is removed.

  Under a `tf.distribute` strategy with several workers
  (`tfr_ssl.training.distribute`) every worker runs this with the same
  config and workdir (on storage they all reach); only the chief locks and
  writes the workdir, the others keep their share of each checkpoint in a
  private temporary directory, and all of them resume from the chief's last
  checkpoint.

  Args:
    config: The run's config.
    workdir: Where every artifact of the run lives.
    strategy: The distribution strategy (None: the default, one device).

  Returns:
    A summary: steps, final losses, validation recall per epoch, timings.

  Raises:
    WorkdirError: `workdir` holds a run with a different config, its data
      changed, or another process is using it.
    ConfigError: a setting out of range.
    ModelConfigError: a config the data cannot take.
  """
  workdir_lib.check_config(config)
  config = workdir_lib.resolve_paths(config)
  strategy = strategy or tf.distribute.get_strategy()
  role = distribute.role(strategy)
  for path, size in (
    ("train.batch_size", config.train.batch_size),
    ("ssl.batch_size", config.ssl.batch_size),
  ):
    config_lib.check_batch_split(path, size, role.replicas)
  if not role.chief:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    with tempfile.TemporaryDirectory(prefix="tfr_ssl_worker_") as scratch:
      return _train_and_evaluate(config, workdir, strategy, scratch)
  with workdir_lib.lock(workdir, create=True) as workdir:
    return _train_and_evaluate(config, workdir, strategy)


def _train_and_evaluate(
  config: config_lib.Config,
  workdir: str,
  strategy: tf.distribute.Strategy,
  scratch: str | None = None,
) -> dict:
  """The loop: train up to the next event, log, end the epoch, checkpoint."""
  run = _Run(config, workdir, strategy, scratch)
  try:
    if run.role.distributed:
      with distribute.peer_loss(lambda: _resume_hint(workdir)):
        return _loop(run, config)
    return _loop(run, config)
  except BaseException:
    # An error line printed next must not be glued to the progress bar.
    run.end_bar_line()
    raise


def _resume_hint(workdir: str) -> str:
  step = workdir_lib.latest_step(workdir)
  where = f"step {step}" if step is not None else "the start"
  return f"they resume from the last checkpoint ({where})"


def _loop(run: _Run, config: config_lib.Config) -> dict:
  while int(run.step) < run.total_steps:
    phase = run.train_steps()
    step = int(run.step)
    if step % config.train.log_every == 0 or step == run.total_steps:
      run.log(step, phase)
    epoch = run.epoch_ending_at(step)
    saves = (
      step % config.train.checkpoint_every == 0
      or epoch
      or step == run.total_steps
    )
    if epoch or saves:
      # A lazy optimizer applies the updates its rows sat out, so what is
      # validated and saved is what the optimizer defines.
      run.sync_optimizer()
      run.stop_if_not_finite(step)
    if epoch:
      run.show_progress(step)
      run.end_epoch(step, epoch)  # early stopping lowers run.total_steps
    if saves or step == run.total_steps:
      run.save(step)
  return run.finish()


class _Run:
  """The state the steps of one training run share (see `_train_and_evaluate`).

  Built in the order the run needs it: the workdir claimed and the model
  built (`_claim_workdir`), the input iterator, the checkpoint restored (or
  the warm start applied), the validation history up to the restored step,
  then the logging: TensorBoard writer, gradient norms, the window of
  per-batch means and the progress bar (one per epoch, and one for
  pretraining).
  """

  def __init__(
    self,
    config: config_lib.Config,
    workdir: str,
    strategy: tf.distribute.Strategy,
    scratch: str | None = None,
  ):
    self.config = config
    self.workdir = workdir
    self.strategy = strategy
    self.role = distribute.role(strategy)
    # Where this process writes: the workdir, or a non-chief worker's
    # private directory (its copy of each checkpoint, then deleted).
    self.scratch = scratch
    with strategy.scope():
      self.prepared, self.model, self.steps_per_epoch = _claim_workdir(
        config, workdir, chief=self.role.chief
      )
      self.window = {
        name: tf_keras.metrics.Mean(name) for name in _PER_BATCH_LOGS
      }
    train = config.train
    self.pretrain_steps = (
      train.pretrain_steps if train.schedule == "pretrain" else 0
    )
    self.total_steps = self.pretrain_steps + self.steps_per_epoch * train.epochs
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.weights_finite = _finite_check(self.model)
    # The first step whose loss was not finite (-1: none), set by the step
    # function; not part of the checkpoint.
    self.nonfinite_step = tf.Variable(
      -1, dtype=tf.int64, trainable=False, name="nonfinite_step"
    )
    state = {
      "model": self.model,
      "optimizer": self.model.optimizer,
      "step": self.step,
    }
    if not self.role.distributed:
      # One process: the iterator's position is saved with the model. A
      # distributed iterator cannot be saved; it is rebuilt at the
      # restored step instead (`_distributed_iterator`).
      self.iterator = iter(train_stream(config, self.prepared))
      state["iterator"] = self.iterator
    checkpoint = tf.train.Checkpoint(**state)
    self.manager = tf.train.CheckpointManager(
      checkpoint, self._path(CHECKPOINT_DIR), max_to_keep=3
    )
    self._resume_or_warm_start(checkpoint)
    with strategy.scope():
      # The optimizer's variables are made now, not by the first step: a
      # `tf.function` whose first trace creates variables is traced a
      # second time. After the restore, so restored slots take their saved
      # values as they are created (as the first step would have made them).
      self.model.optimizer.build(self.model.trainable_variables)
    if self.role.distributed:
      self.iterator = self._distributed_iterator(int(self.step))
    self.writer = (
      tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
      if self.role.chief
      else tf.summary.create_noop_writer()
    )
    # Epochs validated after the checkpoint we resumed from happen again.
    self.history = [
      h for h in _read_history(workdir) if h["step"] <= int(self.step)
    ]
    self.step_fns = {}
    self.last_logs = {}
    # A diagnostic of one process's batch (`diagnostics.gradient_norms`),
    # taken on a fixed probe batch: the first of the training stream.
    self.grad_norms = self.probe = None
    if not self.role.distributed:
      # No autograph: like the step's, its branches are Python's.
      self.grad_norms = tf.function(
        functools.partial(diagnostics.gradient_norms, self.model),
        autograph=False,
      )
      self.probe = next(iter(train_stream(config, self.prepared)))
    if _should_stop(self.history, train.early_stopping_patience):
      self.total_steps = int(self.step)  # this run already stopped early
    # The bar of the epoch being trained: (its first and last step, the
    # Progbar, the step it counts from); the last step it showed, and
    # whether its line is unfinished.
    self.bar = None
    self.bar_shown = -1
    self.bar_open = False
    self.started = time.perf_counter()
    self.first_step = int(self.step)

  def _path(self, name: str) -> str:
    """Where this process writes `name` (see `scratch`)."""
    return os.path.join(self.scratch or self.workdir, name)

  def _distributed_iterator(self, start_step: int):
    """The sharded training stream, positioned at global step `start_step`."""
    role = self.role

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
      del context  # the shard is the role's: replicas, first and local
      return train_stream(
        self.config,
        self.prepared,
        shard=_shard(role),
        start_step=start_step,
      )

    return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

  def _resume_or_warm_start(self, checkpoint: tf.train.Checkpoint) -> None:
    """Restores the latest checkpoint, else warm-starts if asked.

    Every worker restores the chief's latest checkpoint.
    """
    latest = tf.train.latest_checkpoint(
      os.path.join(self.workdir, CHECKPOINT_DIR)
    )
    if latest:
      status = checkpoint.restore(latest)
      status.assert_existing_objects_matched()
      if not self.weights_finite():
        # Not resumed: the optimizer's slots are never restored either.
        status.expect_partial()
        raise NonFiniteError(
          f"{latest} holds weights that are not finite (nan or inf), so "
          f"training cannot resume from it: train again in a new --workdir "
          "(with a lower --learning_rate)."
        )
      logging.info("Resuming from %s at step %d.", latest, int(self.step))
      if int(self.step) > self.total_steps:
        logging.warning(
          "%s already holds a model trained for %d steps, more than the %d "
          "this config asks for: that model is kept (use a new --workdir to "
          "train a shorter run).",
          self.workdir,
          int(self.step),
          self.total_steps,
        )
    elif self.config.train.warm_start_from:
      _warm_start(self.model, self.prepared, self.config.train.warm_start_from)

  def train_steps(self) -> str:
    """Trains up to the next step that logs, validates, saves or changes
    phase (at most `train.steps_per_loop` steps), in one call of the
    compiled step function; returns the phase trained."""
    step = int(self.step)
    phase = model_lib.phase_for_step(self.config, step)
    if phase not in self.step_fns:
      self.step_fns[phase] = _train_step_fn(
        self.model, phase, self.window, self.strategy, self.nonfinite_step
      )
    count = self._steps_to_next_event(step)
    self.open_bar(step + 1)
    self.step_fns[phase](
      self.iterator, tf.constant(count, tf.int32), tf.constant(step, tf.int64)
    )
    bad = int(self.nonfinite_step)
    if bad >= 0:
      self._stop(bad, "the loss")
    self.step.assign_add(count)
    return phase

  def stop_if_not_finite(self, step: int) -> None:
    """Stops the run if a weight is not finite (before it is validated or
    saved: no checkpoint ever holds one)."""
    if not self.weights_finite():
      self._stop(step, "a weight")

  def _stop(self, step: int, what: str) -> None:
    last = workdir_lib.latest_step(self.workdir)
    kept = (
      f"the last checkpoint (step {last}) is kept"
      if last is not None
      else "no checkpoint was saved"
    )
    raise NonFiniteError(
      f"training stopped at step {step}: {what} is not finite (nan or inf); "
      f"{kept}. Lower --learning_rate (now {self.config.train.learning_rate}"
      ") and train again in a new --workdir."
    )

  def _steps_to_next_event(self, step: int) -> int:
    train = self.config.train
    events = [
      self.total_steps,
      (step // train.log_every + 1) * train.log_every,
      (step // train.checkpoint_every + 1) * train.checkpoint_every,
    ]
    if step < self.pretrain_steps:
      events.append(self.pretrain_steps)
    else:
      done = (step - self.pretrain_steps) // self.steps_per_epoch
      events.append(self.pretrain_steps + (done + 1) * self.steps_per_epoch)
    return max(1, min(train.steps_per_loop, min(events) - step))

  def log(self, step: int, phase: str) -> None:
    """Shows and writes the means since the last log, then restarts them."""
    # Read here, not every step: a read is a host sync, and under a
    # strategy a collective per metric.
    logs = {metric.name: metric.result() for metric in self.model.metrics}
    logs.update({k: m.result() for k, m in self.window.items()})
    values = {k: float(v) for k, v in logs.items()}
    self.last_logs = dict(values)
    self.show_progress(step, values)
    if self.grad_norms and min(model_lib.loss_weights(self.config, phase)):
      # On the fixed probe batch, so successive logs compare; the metrics
      # it touches are reset just below.
      values.update(
        {k: float(v) for k, v in self.grad_norms(self.probe).items()}
      )
    self._scalars("train", step, values)
    # Metrics are running means: restart them so each log covers only
    # the steps since the previous one.
    self.model.reset_metrics()
    for metric in self.window.values():
      metric.reset_state()

  def open_bar(self, step: int) -> None:
    """Starts the bar of `step`'s epoch unless it is the current one.

    Each epoch (and the pretraining) has its own bar, headed by its name,
    started before its first step is trained and counting the steps this
    process trains in it (so a resumed epoch's ETA is not computed from
    steps an earlier process trained).
    """
    if not self.role.chief:
      return
    first, last, title = self._span(step)
    if self.bar is not None and self.bar[:2] == (first, last):
      return
    self.end_bar_line()
    start = max(first, step - 1)
    if start > first:
      title += f" (resumed at step {start - first}/{last - first})"
    print(title, flush=True)
    bar = tf_keras.utils.Progbar(last - start, unit_name="step")
    self.bar = (first, last, bar, start)

  def show_progress(self, step: int, values: dict | None = None) -> None:
    """Moves the bar of `step`'s epoch to it, with the window's means."""
    if not self.role.chief:
      return
    self.open_bar(step)
    last, bar, start = self.bar[1:]
    if values is None and self.bar_shown == step:
      return  # already shown (a log step that ends the epoch)
    self.bar_shown = step
    items = list((values or {}).items())
    # Every value is a mean over the logging window: shown as it is.
    bar.stateful_metrics = {name for name, _ in items}
    bar.update(step - start, values=items)
    self.bar_open = step < last

  def end_bar_line(self) -> None:
    """Ends the line of a bar left unfinished (before an error line)."""
    if self.bar_open:
      print(flush=True)
      self.bar_open = False

  def _span(self, step: int) -> tuple[int, int, str]:
    """(first step, last step, title) of the bar that shows `step`."""
    if step <= self.pretrain_steps:
      return 0, self.pretrain_steps, "Pretraining the item tower (SSL only)"
    epoch = -(-(step - self.pretrain_steps) // self.steps_per_epoch)
    last = self.pretrain_steps + epoch * self.steps_per_epoch
    title = f"Epoch {epoch}/{self.config.train.epochs}"
    return last - self.steps_per_epoch, last, title

  def epoch_ending_at(self, step: int) -> int:
    """The (1-based) epoch that `step` ends, or 0 (pretraining steps are
    not part of an epoch)."""
    main_step = step - self.pretrain_steps
    if main_step > 0 and main_step % self.steps_per_epoch == 0:
      return main_step // self.steps_per_epoch
    return 0

  def sync_optimizer(self) -> None:
    """Brings lazily updated rows up to date (`optimizers.LazyAdam`)."""
    sync = getattr(self.model.optimizer, "sync", None)
    if sync is not None:
      sync(self.model.trainable_variables)

  def end_epoch(self, step: int, epoch: int) -> None:
    """Validates, keeps the best model, and applies early stopping."""
    recall = validate(self.model, self.prepared, self.config)
    self.history.append({"epoch": epoch, "step": step, **recall})
    logging.info("Epoch %d validation: %s", epoch, recall)
    self._scalars("validation", step, recall)
    if _best_entry(self.history) is self.history[-1]:
      _save_best(self.model, self.scratch or self.workdir, self.history[-1])
    patience = self.config.train.early_stopping_patience
    # At the last step nothing is left to stop.
    if step < self.total_steps and _should_stop(self.history, patience):
      logging.info(
        "Validation %s has not improved for %d epochs: stopping at "
        "step %d (the best model is kept in %s/).",
        SELECT_BY,
        patience,
        step,
        BEST_DIR,
      )
      self.total_steps = step

  def save(self, step: int) -> None:
    """The validation history, then the checkpoint."""
    # History first: on resume, entries past the restored step are
    # dropped, so a crash between the two writes loses nothing.
    if self.role.chief:
      _write_history(self.workdir, self.history)
    # Every worker saves (the save reads replicated state collectively);
    # only the chief's copy, in the workdir, is kept.
    try:
      self.manager.save(checkpoint_number=step)
    except Exception:
      # A failed save (a full disk) leaves TensorFlow's ckpt-N_temp/
      # behind: we hold the lock, so it is ours to remove (and log, on a
      # line of its own).
      self.end_bar_line()
      workdir_lib.clean_stale(self.scratch or self.workdir)
      raise

  def finish(self) -> dict:
    """Writes train_metrics.json and returns that summary."""
    self.writer.flush()
    summary = {
      "steps": int(self.step),
      "steps_this_run": int(self.step) - self.first_step,
      "seconds_this_run": time.perf_counter() - self.started,
      "final_logs": self.last_logs,
      "validation": self.history,
    }
    if self.role.distributed:
      summary["replicas"] = self.role.replicas
      summary["workers"] = self.role.workers
    if self.role.chief:
      atomic.write_json(
        os.path.join(self.workdir, "train_metrics.json"), summary
      )
    return summary

  def _scalars(self, prefix: str, step: int, values: dict) -> None:
    with self.writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(f"{prefix}/{name}", value)


def build_model(
  config: config_lib.Config, prepared: contract.PreparedDataset
) -> TwoTowerModel:
  """The model of `config`, compiled with its optimizer."""
  model = TwoTowerModel(config, prepared)
  model.compile(
    optimizer=optimizers.make_optimizer(
      config.train.optimizer, config.train.learning_rate
    )
  )
  return model


def train_stream(
  config: config_lib.Config,
  prepared: contract.PreparedDataset,
  shard: pipeline.Shard | None = None,
  start_step: int = 0,
) -> tf.data.Dataset:
  """Main interactions and uniform SSL items, zipped, one dict per step.

  `shard` and `start_step`: see `pipeline.train_dataset`.
  """
  # Repeated: epochs are counted in steps, and the iterator (saved in the
  # checkpoint) runs across epoch boundaries.
  return pipeline.train_dataset(
    prepared,
    batch_size=config.train.batch_size,
    ssl_batch_size=config.ssl.batch_size,
    task=config.model.task,
    seed=config.train.seed,
    repeat=True,
    shard=shard,
    start_step=start_step,
    history_length=query_history_length(config),
    history_mode=history.training_mode(
      config.model.training_history, config.data.split
    ),
    user_ssl=config.ssl.user_alpha > 0,
  )


def query_history_length(config: config_lib.Config) -> int:
  """The history length the query tower reads (0: none; item-to-item
  queries are items)."""
  if query_side.query_side(config.model.task).is_item:
    return 0
  return config.model.history_length


def _shard(role: distribute.Role) -> pipeline.Shard:
  return pipeline.Shard(
    replicas=role.replicas, first=role.first_replica, local=role.local_replicas
  )


def validate(
  model: TwoTowerModel,
  prepared: contract.PreparedDataset,
  config: config_lib.Config,
) -> dict[str, float]:
  """Recall@K on (a sample of) the validation split."""
  metrics = embed.evaluate_model(
    model.query_tower,
    model.item_tower,
    prepared,
    "validation",
    config.eval,
    task=config.model.task,
    max_pairs=config.train.validation_examples,
    seed=config.train.seed,
    history_length=query_history_length(config),
  )
  return {
    name: float(value)
    for name, value in metrics.items()
    if name.startswith("recall@")
  }


CHECKPOINTS = ("best", "latest")


def trained_checkpoint(workdir: str, which: str = "best") -> str:
  """The checkpoint prefix a run's model is restored from.

  `best`: the epoch with the best validation `SELECT_BY` (WORKDIR/best/),
  falling back to the latest checkpoint for a run that never validated;
  `latest`: the last training checkpoint.

  Raises:
    WorkdirError: no checkpoint in `workdir`.
  """
  if which not in CHECKPOINTS:
    raise ValueError(
      f"checkpoint must be one of {list(CHECKPOINTS)}: {which!r}"
    )
  best = best_checkpoint(workdir) if which == "best" else None
  if best is not None:
    return best[0]
  latest = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))
  if latest is None:
    raise WorkdirError(
      f"{workdir} has no checkpoint: train first (pipelines.train "
      f"--workdir={workdir})."
    )
  return latest


def load_trained_model(
  workdir: str, which: str = "best"
) -> tuple[TwoTowerModel, contract.PreparedDataset, config_lib.Config]:
  """Rebuilds the model of a run and restores a checkpoint of it.

  Args:
    workdir: The run.
    which: `best` (by validation, the default) or `latest`; see
      `trained_checkpoint`.

  Raises:
    WorkdirError: no config or no checkpoint in `workdir`.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = read_config(workdir)
  path = trained_checkpoint(workdir, which)
  prepared, _, _ = workdir_lib.load_dataset(workdir, config)
  model = build_model(config, prepared)
  tf.train.Checkpoint(model=model).restore(path).expect_partial()
  return model, prepared, config


def read_config(workdir: str) -> config_lib.Config:
  """WORKDIR/config.json (WorkdirError when there is none)."""
  return workdir_lib.read_config(workdir)


def _claim_workdir(
  config: config_lib.Config, workdir: str, chief: bool = True
) -> tuple[contract.PreparedDataset, TwoTowerModel, int]:
  """Checks that `config` may run in `workdir`, then records it.

  Nothing is written until every check passed: the fixed settings of an
  existing run, the data it was trained on, batches the data can fill (see
  `_steps_per_epoch`), and the model's own checks of the config against the
  data. Then
  config.json (and, for a new run, dataset.json) are written, by the chief
  only: other workers check and write nothing.

  Returns:
    (the prepared data, the compiled model, steps per epoch).
  """
  changed = workdir_lib.check_resumable(workdir, config)
  tf_keras.utils.set_random_seed(config.train.seed)
  prepared, info, new = workdir_lib.load_dataset(workdir, config)
  _check_task(config, prepared)
  # Before the model: a batch sized beyond the data is refused before it
  # costs memory (an SSL batch of B items scores a B x B matrix).
  steps_per_epoch = _steps_per_epoch(config, prepared)
  model = build_model(config, prepared)
  if not chief:
    return prepared, model, steps_per_epoch
  if new:
    workdir_lib.write_dataset_info(workdir, info)
  workdir_lib.claim(workdir, config, changed)
  return prepared, model, steps_per_epoch


def read_dataset_info(workdir: str) -> dict:
  with open(os.path.join(workdir, DATASET_FILE)) as f:
    return json.load(f)


def _check_task(
  config: config_lib.Config, prepared: contract.PreparedDataset
) -> None:
  """Refuses `user_to_item` on data without users (explicit item pairs)."""
  is_item = query_side.query_side(config.model.task).is_item
  if is_item or csv_source.has_users(
    prepared.vocabularies, prepared.schema.query_id
  ):
    return
  raise workdir_lib.ConfigError(
    "model.task",
    f"{config.model.task} needs users, and this data has none (its "
    "interactions.csv has no user column, only (query item, item) pairs): "
    "use --task=item_to_item.",
  )


def _steps_per_epoch(
  config: config_lib.Config, prepared: contract.PreparedDataset
) -> int:
  """Full main-task batches per epoch, once both batch sizes are checked.

  Raises:
    ConfigError: a batch larger than the data fills: the main batch above
      the usable training interactions, or the SSL batch above the corpus
      (its uniform stream would repeat items within a batch, each repeat an
      in-batch negative equal to its positive).
  """
  side = query_side.query_side(config.model.task)
  rows = len(side.usable(prepared.splits["train"]))
  full = rows // config.train.batch_size
  if full == 0:
    raise workdir_lib.ConfigError(
      "train.batch_size",
      f"{config.train.batch_size} is more than the {rows} usable training "
      f"interactions: use at most {rows}.",
    )
  if config.ssl.batch_size > prepared.num_items:
    raise workdir_lib.ConfigError(
      "ssl.batch_size",
      f"{config.ssl.batch_size} is more than the {prepared.num_items} items "
      f"of the corpus (the SSL batch is drawn from it without repeats): use "
      f"at most {prepared.num_items}.",
    )
  if config.train.steps_per_epoch:
    return min(full, config.train.steps_per_epoch)
  return full


# TFRS's train step reports the last batch's value of these; the loop
# replaces them by means over the logging window, like the loss components.
_PER_BATCH_LOGS = ("loss", "regularization_loss", "total_loss")


def _train_step_fn(
  model: TwoTowerModel,
  phase: str,
  window: dict[str, tf_keras.metrics.Mean],
  strategy: tf.distribute.Strategy,
  nonfinite_step: tf.Variable,
):
  """`count` training steps on every replica, in one call (metrics are read
  at log steps).

  The call stops after the first step whose loss is not finite and records
  that (1-based) step in `nonfinite_step`. Each process checks its own
  replicas' losses: no collective, and no host sync before the call ends.
  """
  replicas = strategy.num_replicas_in_sync

  # Not converted by autograph: every branch of the model's step (phase,
  # SSL on or off, logQ mode, dropout) is decided by Python values, so
  # converting the whole model's code would only cost trace time (about
  # half of it on ML-1M). Only the loop below needs autograph.
  @tf.autograph.experimental.do_not_convert
  def replica_step(batch):
    # compute_loss reads the phase when traced; setting it inside the
    # traced function keeps a retrace from picking up another phase's value.
    model.phase = phase
    logs = model.train_step(batch)
    for name in _PER_BATCH_LOGS:
      # A replica's loss is its share of the global mean (divided by the
      # global batch); the window averages over replicas, hence * replicas.
      window[name].update_state(logs[name] * replicas)
    return logs["total_loss"]

  @tf.function
  def step_fn(iterator, count, first_step):
    for i in tf.range(count):
      losses = strategy.experimental_local_results(
        strategy.run(replica_step, args=(next(iterator),))
      )
      if not tf.reduce_all(tf.math.is_finite(tf.stack(losses))):
        nonfinite_step.assign(first_step + tf.cast(i, tf.int64) + 1)
        break

  return step_fn


def _finite_check(model: TwoTowerModel):
  """A function: whether every weight of `model` is finite (one host sync
  per call, one trace per model)."""
  variables = model.trainable_variables

  @tf.function(autograph=False)
  def finite():
    return tf.reduce_all(
      [tf.reduce_all(tf.math.is_finite(v)) for v in variables]
    )

  return lambda: bool(finite())


def _warm_start(
  model: TwoTowerModel, prepared: contract.PreparedDataset, old_workdir: str
) -> None:
  old_workdir = os.path.abspath(os.path.expanduser(old_workdir))
  latest = tf.train.latest_checkpoint(os.path.join(old_workdir, CHECKPOINT_DIR))
  if latest is None:
    raise WorkdirError(
      f"--warm_start_from={old_workdir} has no checkpoint to start from."
    )
  old_info = read_dataset_info(old_workdir)
  warm_start.warm_start(
    tf.train.Checkpoint(model=model),
    latest,
    tables=model.embedding_tables(),
    old_vocabularies=old_info["vocabularies"],
    new_vocabularies=prepared.vocabularies,
    skip=("sampling",),
  )


def _best_entry(history: list[dict]) -> dict | None:
  """The validation entry with the highest `SELECT_BY` (earliest on ties)."""
  best = None
  for entry in history:
    if best is None or entry[SELECT_BY] > best[SELECT_BY]:
      best = entry
  return best


def _should_stop(history: list[dict], patience: int) -> bool:
  """True when the last `patience` epochs did not beat the best before."""
  if patience <= 0 or len(history) <= patience:
    return False
  best = _best_entry(history)
  return history.index(best) < len(history) - patience


def _save_best(model: TwoTowerModel, workdir: str, entry: dict) -> None:
  """Saves the model (no optimizer) as WORKDIR/best/, atomically."""
  with atomic.atomic_dir(os.path.join(workdir, BEST_DIR)) as tmp:
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, BEST_PREFIX))
    atomic.write_json(os.path.join(tmp, "best.json"), entry)


def best_checkpoint(workdir: str) -> tuple[str, dict] | None:
  """(checkpoint prefix, validation entry) of WORKDIR/best/, or None."""
  path = os.path.join(workdir, BEST_DIR, "best.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    entry = json.load(f)
  return os.path.join(workdir, BEST_DIR, BEST_PREFIX), entry


def _history_path(workdir: str) -> str:
  return os.path.join(workdir, "validation_history.json")


def _read_history(workdir: str) -> list[dict]:
  path = _history_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def _write_history(workdir: str, history: list[dict]) -> None:
  atomic.write_json(_history_path(workdir), history)


__all__ = [
  "WorkdirError",
  "best_checkpoint",
  "build_model",
  "load_trained_model",
  "read_config",
  "read_dataset_info",
  "train_and_evaluate",
  "train_stream",
  "trained_checkpoint",
  "validate",
]
