"""Micro-batching: concurrent requests answered by one model call.

A retrieval model call costs about the same for 1 query as for 32: the query
tower is a few small matmuls and the index search (a [B, D] x [D, N] matmul
or a ScaNN batched search) is dominated by reading the N items, once per
call. Requests therefore join an asyncio queue, and one batcher task forms
batches opportunistically: it takes the first waiting request and, without
waiting, every request queued behind it (up to `max_batch_size` queries),
and runs them in one call on the model thread. A request that finds the
batcher idle is run at once, alone; requests that arrive while a call runs
queue up and form the next batch together, so batches grow with load by
themselves and an idle service adds no delay.

The model thread keeps the event loop free to read and parse the next
batch's requests during a call. When a request is alone, with nothing else
queued or in flight, the loop has nothing to do meanwhile, and it makes the
call itself: handing the call to a thread and the answer back costs two
thread wake-ups, which on a busy host weigh more than the call's own
Python.

`max_wait` (0 by default) lets a batch that already holds more than one
request, a sign of load, wait that long for more before it runs: fewer,
larger calls at the cost of latency. A lone request never waits.

The batch reads the serving version once, when it starts: a refresh that
swaps versions mid-batch does not touch it (see `versions`).

The queue is bounded (`max_queue` queries): beyond it requests are refused
with 503 at once rather than waiting without bound.

One request must not fail its neighbours. Requests are validated completely
before they join a batch (`protocol`), so a batch should not fail; if one
still does, each of its requests is run again alone, and only a request that
fails alone gets an error: 400 if the model refused its values (an input the
validation missed), 500 for anything else (a fault of the server).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl.serving import versions
from tfr_ssl.serving.protocol import Query, RequestError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
  queries: Sequence[Query]
  future: asyncio.Future


@dataclasses.dataclass
class Stats:
  """Counters of the batcher since it started.

  `waits` counts the batches that waited `max_wait` for more requests,
  `inline` the calls made on the event loop's thread (a lone request).
  """

  batches: int = 0
  queries: int = 0
  requests: int = 0
  largest_batch: int = 0
  waits: int = 0
  inline: int = 0
  failed_batches: int = 0
  failed_requests: int = 0

  def as_dict(self) -> dict:
    return {
      **dataclasses.asdict(self),
      "mean_batch": round(self.queries / self.batches, 2)
      if self.batches
      else 0.0,
    }


# What a model call raises for values it cannot take (a string it cannot
# encode, a tensor op refusing its input): the request's fault, not the
# server's.
INPUT_ERRORS = (ValueError, UnicodeError, tf.errors.InvalidArgumentError)


def _alone_error(error: Exception) -> Exception:
  """The error a request that failed alone gets (400 for bad input)."""
  if isinstance(error, RequestError):
    return error
  if isinstance(error, INPUT_ERRORS):
    return RequestError(
      f"instances: the model cannot take this request's values "
      f"({versions.one_line(error)})"
    )
  return error


def run_batch(version, queries: Sequence[Query]) -> list[tuple[list, list]]:
  """One model call for `queries` on `version`; per query (ids, scores).

  Missing results (fewer than k items, or excluded) are dropped, so a list
  may be shorter than its top_k.
  """
  # Lists of strings: the model makes one constant of each, with no
  # per-value conversion.
  features = {
    n: [q.features.get(n, "") for q in queries] for n in version.feature_names
  }
  exclude = None
  if any(q.exclude for q in queries):
    exclude = [list(q.exclude) for q in queries]
  scores, ids = version.model(features, exclude=exclude)
  # Only the columns some query returns are read; the checks are
  # vectorised (a Python loop per item cost more than the model call's
  # own Python for a lone query).
  width = max(q.top_k for q in queries)
  scores, ids = _numpy(scores)[:, :width], _numpy(ids)[:, :width]
  keep = np.isfinite(scores) & (ids != b"") & (ids != "")
  out = []
  for q, row_scores, row_ids, row_keep in zip(
    queries, scores, ids, keep, strict=True
  ):
    top = row_keep[: q.top_k]
    out.append(
      (
        [_text(i) for i in row_ids[: q.top_k][top]],
        row_scores[: q.top_k][top].tolist(),
      )
    )
  return out


def _numpy(values) -> np.ndarray:
  # np.asarray reads a tensor through the buffer protocol, whose dtype
  # parsing costs more than the copy; `numpy()` does not.
  return values.numpy() if hasattr(values, "numpy") else np.asarray(values)


def _text(item) -> str:
  return item.decode() if isinstance(item, bytes) else str(item)


class MicroBatcher:
  """Collects queries from concurrent requests into batched model calls.

  Args:
    current: Returns the serving version (read once per batch).
    max_batch_size: Queries per model call (a larger request is one call).
    max_wait: Seconds a batch of more than one request waits for more (0:
      never wait; a lone request never waits).
    max_queue: Queries waiting at most; more are refused with 503.
    run: The batch function (tests substitute it).
    inline_when_idle: Run a lone request on the event loop's thread when
      nothing else is queued or in flight (see the module docstring).
    in_flight: Returns how many requests the server is handling (received
      but not answered); by default the batcher's own count.
  """

  def __init__(
    self,
    current: Callable,
    max_batch_size: int = 64,
    max_wait: float = 0.0,
    max_queue: int = 4096,
    run: Callable = run_batch,
    inline_when_idle: bool = True,
    in_flight: Callable[[], int] | None = None,
  ):
    if max_batch_size < 1:
      raise ValueError("max_batch_size must be at least 1.")
    self._current = current
    self.max_batch_size = max_batch_size
    self.max_wait = max_wait
    self.max_queue = max_queue
    self._run = run
    self.inline_when_idle = inline_when_idle
    self._submitted = 0
    self._in_flight = in_flight or (lambda: self._submitted)
    self._queue: asyncio.Queue[_Pending] | None = None
    self._carry: _Pending | None = None
    self._waiting = 0
    self._task: asyncio.Task | None = None
    # One model thread: TF parallelises inside a call; two concurrent
    # calls would only split the same cores.
    self._executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=1, thread_name_prefix="model"
    )
    self.stats = Stats()

  def start(self) -> None:
    """Starts the batcher task on the running event loop."""
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    """Stops batching; queries still waiting get a 503."""
    if self._task is not None:
      self._task.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await self._task
      self._task = None
    pending = [self._carry] if self._carry else []
    while self._queue is not None and not self._queue.empty():
      pending.append(self._queue.get_nowait())
    for item in pending:
      if not item.future.done():
        item.future.set_exception(
          RequestError("the service is shutting down", status=503)
        )
    self._executor.shutdown(wait=True)

  async def submit(self, queries: Sequence[Query]):
    """Answers `queries` in some batch.

    Returns:
      (the version that answered, per query (ids, scores)).

    Raises:
      RequestError: 503 when the queue is full or the service stops.
    """
    if self._queue is None:
      raise RequestError("the service is not running", status=503)
    if self._waiting + len(queries) > self.max_queue:
      raise RequestError(
        f"the service is overloaded ({self._waiting} queries waiting); "
        "retry later",
        status=503,
      )
    future = asyncio.get_running_loop().create_future()
    self._waiting += len(queries)
    self._submitted += 1
    self._queue.put_nowait(_Pending(queries, future))
    try:
      return await future
    finally:
      self._submitted -= 1

  async def _next(self, timeout: float | None) -> _Pending | None:
    if self._carry is not None:
      item, self._carry = self._carry, None
      return item
    if timeout is None:
      return await self._queue.get()
    if not self._queue.empty():
      return self._queue.get_nowait()
    if timeout <= 0:
      return None
    try:
      return await asyncio.wait_for(self._queue.get(), timeout)
    except TimeoutError:
      return None

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      first = await self._next(None)  # Idle until a request arrives.
      batch = [first]
      # What queued while the last call ran joins now, without a wait.
      size = await self._fill(batch, len(first.queries), None)
      if (
        self.max_wait > 0
        and len(batch) > 1
        and self._carry is None
        and size < self.max_batch_size
      ):
        self.stats.waits += 1
        size = await self._fill(batch, size, loop.time() + self.max_wait)
      await self._answer(loop, batch, size)

  async def _fill(
    self, batch: list[_Pending], size: int, deadline: float | None
  ) -> int:
    """Adds queued requests to `batch` until it is full; returns its size.

    With no `deadline` only requests already queued join; otherwise the
    batch waits for more until the loop's clock reaches `deadline`. A
    request that does not fit is kept to start the next batch (a request is
    never split).
    """
    loop = asyncio.get_running_loop()
    while size < self.max_batch_size:
      timeout = 0.0 if deadline is None else deadline - loop.time()
      item = await self._next(timeout)
      if item is None:
        break
      if size + len(item.queries) > self.max_batch_size:
        self._carry = item  # Starts the next batch.
        break
      batch.append(item)
      size += len(item.queries)
    return size

  async def _answer(self, loop, batch: list[_Pending], size: int) -> None:
    self._waiting -= size
    live = [p for p in batch if not p.future.done()]
    if not live:
      return
    queries = [q for p in live for q in p.queries]
    version = self._current()
    try:
      if len(live) == 1 and self._idle():
        # Nothing else is waiting: the loop would sit idle during the call,
        # so it makes the call itself and saves the two thread wake-ups of
        # a hand-off to the model thread and back.
        self.stats.inline += 1
        results = self._run(version, queries)
      else:
        results = await loop.run_in_executor(
          self._executor, self._run, version, queries
        )
    except Exception as e:
      if len(live) == 1:
        self._fail(live[0], version, e)
      else:
        log.warning(
          "A batch of %d requests failed (%s); running each alone.",
          len(live),
          versions.one_line(e),
        )
        self.stats.failed_batches += 1
        for p in live:
          await self._answer_alone(loop, version, p)
      return
    self._count(live, len(queries))
    start = 0
    for p in live:
      end = start + len(p.queries)
      if not p.future.done():
        p.future.set_result((version, results[start:end]))
      start = end

  def _idle(self) -> bool:
    """No other request is queued or (per `in_flight`) being received."""
    return (
      self.inline_when_idle
      and self._carry is None
      and self._queue.empty()
      and self._in_flight() <= 1
    )

  async def _answer_alone(self, loop, version, pending: _Pending) -> None:
    """Runs one request of a failed batch by itself (same version)."""
    if pending.future.done():
      return
    try:
      results = await loop.run_in_executor(
        self._executor, self._run, version, pending.queries
      )
    except Exception as e:
      self._fail(pending, version, e)
      return
    self._count([pending], len(pending.queries))
    if not pending.future.done():
      pending.future.set_result((version, results))

  def _fail(self, pending: _Pending, version, error: Exception) -> None:
    """Answers a request that failed on its own with its error."""
    self.stats.failed_requests += 1
    refused = _alone_error(error)
    if isinstance(refused, RequestError):
      log.info("A request was refused by the model: %s", refused.message)
      error = refused
    else:
      log.error(
        "A request of %d queries failed on version %s.",
        len(pending.queries),
        getattr(version, "number", version),
        exc_info=error,
      )
      error = RequestError(
        "internal error: the model call failed; the server log has the details",
        status=500,
      )
    if not pending.future.done():
      pending.future.set_exception(error)

  def _count(self, answered: list[_Pending], queries: int) -> None:
    self.stats.batches += 1
    self.stats.queries += queries
    self.stats.requests += len(answered)
    self.stats.largest_batch = max(self.stats.largest_batch, queries)
