"""Running training under a `tf.distribute` strategy.

Three strategies, chosen by `pipelines.train --strategy`:

  - `default`: one process, one device (TensorFlow's default strategy).
  - `mirrored`: several devices of one host (`MirroredStrategy`);
    `--local_devices=N` splits the CPU into N logical devices.
  - `multi_worker`: several hosts (`MultiWorkerMirroredStrategy`), each
    process told its place in the cluster by the `TF_CONFIG` environment
    variable.

The global batch is split over the replicas, and the model gathers what a
loss compares across replicas (`gather`), so every replica scores its
queries against the candidates of the whole global batch: N replicas with
global batch B train on the same softmax as one replica with batch B (see
docs/architecture.md, "Running on several machines").

The replica helpers below are no-ops outside a strategy with more than one
replica, so the model code reads the same in both cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


class DistributeError(ValueError):
  """A strategy that cannot be set up as asked (a user error)."""


def make_strategy(name: str, local_devices: int = 0) -> tf.distribute.Strategy:
  """The strategy named `name` (one of `STRATEGIES`).

  Args:
    name: `default`, `mirrored` or `multi_worker`.
    local_devices: With `mirrored` or `multi_worker`, split this host's CPU
      into this many logical devices, one replica each (0 = the devices
      TensorFlow finds: one CPU, or the GPUs). Must be set before
      TensorFlow initialises its devices, i.e. before anything runs.

  Raises:
    DistributeError: unknown name, `multi_worker` without a usable
      `TF_CONFIG`, or devices already initialised.
  """
  if name not in STRATEGIES:
    raise DistributeError(
      f"--strategy must be one of {list(STRATEGIES)}, got {name!r}."
    )
  if local_devices < 0:
    raise DistributeError(f"--local_devices must be >= 0, got {local_devices}.")
  if name == "default":
    if local_devices > 1:
      raise DistributeError(
        "--local_devices needs --strategy=mirrored or multi_worker."
      )
    return tf.distribute.get_strategy()
  devices = _split_cpu(local_devices) if local_devices > 1 else None
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(devices=devices)
  cluster_spec()  # a clear error for a bad TF_CONFIG; the strategy reads it
  return tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
  )


def parameter_server_strategy(
  resolver: tf.distribute.cluster_resolver.ClusterResolver,
  min_shard_bytes: int = 256 << 10,
) -> tf.distribute.ParameterServerStrategy:
  """A `ParameterServerStrategy` that shards large variables over the PS.

  Every variable of at least `min_shard_bytes` (the embedding tables of
  large vocabularies, the streaming estimator's arrays) is split into up to
  one shard per parameter server (`MinSizePartitioner`), so a table larger
  than one machine's memory lives across them. The model runs under it
  (`tests/distributed_test.py` trains it through a `ClusterCoordinator`
  and restores the sharded checkpoint in one process); `pipelines.train`
  does not offer it, for the reasons in docs/architecture.md ("Running on
  several machines").
  """
  shards = max(1, resolver.cluster_spec().num_tasks("ps"))
  return tf.distribute.ParameterServerStrategy(
    resolver,
    variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
      min_shard_bytes=min_shard_bytes, max_shards=shards
    ),
  )


def tf_config(workers: list[str], index: int) -> str:
  """The TF_CONFIG of worker `index` of a cluster of `workers` (host:port).

  Worker 0 is the chief. Example:
    >>> json.loads(tf_config(["h1:2222", "h2:2222"], 1))["task"]
    {'type': 'worker', 'index': 1}
  """
  return json.dumps(
    {
      "cluster": {"worker": list(workers)},
      "task": {"type": "worker", "index": index},
    }
  )


def cluster_spec() -> dict:
  """The parsed `TF_CONFIG` (DistributeError when missing or malformed)."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise DistributeError(
      "--strategy=multi_worker needs the TF_CONFIG environment variable, "
      'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
      '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\'.'
    )
  try:
    spec = json.loads(raw)
  except json.JSONDecodeError as e:
    raise DistributeError(f"TF_CONFIG is not JSON: {e}.") from None
  task = spec.get("task", {}) if isinstance(spec, dict) else {}
  cluster = spec.get("cluster", {}) if isinstance(spec, dict) else {}
  kind, index = task.get("type"), task.get("index")
  if kind not in cluster or not isinstance(index, int):
    raise DistributeError(
      f"TF_CONFIG: task {task!r} does not name a member of the cluster "
      f"{sorted(cluster)} (need task.type in the cluster and an integer "
      "task.index)."
    )
  if not 0 <= index < len(cluster[kind]):
    raise DistributeError(
      f"TF_CONFIG: task.index {index} is out of range for the "
      f"{len(cluster[kind])} {kind} addresses."
    )
  return spec


def _split_cpu(count: int) -> list[str]:
  cpu = tf.config.list_physical_devices("CPU")[0]
  # Already initialised (RuntimeError): fine if it was split the same way.
  with contextlib.suppress(RuntimeError):
    tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
  logical = tf.config.list_logical_devices("CPU")
  if len(logical) != count:
    raise DistributeError(
      f"--local_devices={count}: TensorFlow already runs on "
      f"{len(logical)} CPU device(s) and cannot be split any more."
    )
  return [d.name for d in logical]


@dataclasses.dataclass(frozen=True)
class Role:
  """This process's place in the run.

  Attributes:
    chief: Writes the run's files (config, checkpoints, history,
      TensorBoard); the other workers write nothing in the workdir.
    worker: Index of this worker (0 on the chief of a one-process run).
    workers: Number of worker processes (input pipelines).
    replicas: Replicas in sync over the whole cluster.
    local_replicas: Replicas of this process.
  """

  chief: bool
  worker: int
  workers: int
  replicas: int
  local_replicas: int

  @property
  def distributed(self) -> bool:
    return self.replicas > 1

  @property
  def first_replica(self) -> int:
    """Global index of this process's first replica."""
    return self.worker * self.local_replicas


def role(strategy: tf.distribute.Strategy) -> Role:
  """The `Role` of this process under `strategy`."""
  replicas = strategy.num_replicas_in_sync
  resolver = getattr(strategy, "cluster_resolver", None)
  kind, index, workers = "worker", 0, 1
  if resolver is not None and resolver.cluster_spec().jobs:
    spec = resolver.cluster_spec()
    kind, index = resolver.task_type, resolver.task_id or 0
    workers = sum(
      len(spec.job_tasks(job))
      for job in ("chief", "worker")
      if job in spec.jobs
    )
    if kind == "worker" and "chief" in spec.jobs:
      index += 1  # the chief is input pipeline 0
  chief = kind == "chief" or (kind == "worker" and index == 0)
  return Role(
    chief=chief,
    worker=index,
    workers=workers,
    replicas=replicas,
    local_replicas=replicas // workers,
  )


# What a collective raises when a peer process is gone.
_PEER_ERRORS = (
  tf.errors.UnavailableError,
  tf.errors.DeadlineExceededError,
  tf.errors.CancelledError,
  tf.errors.AbortedError,
)


@contextlib.contextmanager
def peer_loss(resume_hint):
  """Turns a lost worker into one DistributeError saying how to go on.

  Synchronous training cannot go on without a worker: the collectives of
  the others fail (within seconds when its socket closes). `resume_hint()`
  says where the restarted cluster will resume.
  """
  try:
    yield
  except _PEER_ERRORS as e:
    first = str(getattr(e, "message", e)).strip().splitlines()
    raise DistributeError(
      f"a worker of the cluster was lost ({type(e).__name__}: "
      f"{first[0] if first else ''}); synchronous training cannot go on "
      f"without it. Start every worker again with the same command: "
      f"{resume_hint()}."
    ) from None


__all__ = [
  "STRATEGIES",
  "DistributeError",
  "Role",
  "cluster_spec",
  "make_strategy",
  "parameter_server_strategy",
  "peer_loss",
  "role",
  "tf_config",
]
