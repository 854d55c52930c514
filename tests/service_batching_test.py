"""Opportunistic micro-batching: no wait when idle, sharing under load.

The batcher runs with a fake batch function (no model) on a fresh event
loop; each test is bounded by `TIMEOUT` and asserts on the calls the
batcher made and its counters, never on elapsed time.
"""

import asyncio
import threading

from tfr_ssl.serving import batching, protocol

TIMEOUT = 60.0
# A window no test could sit out: a batch that waited would time out.
FOREVER = 3600.0


class Model:
  """A fake batch function that records its calls; `hold` blocks them."""

  def __init__(self):
    self.calls = []
    self.threads = []
    self.hold = threading.Event()
    self.hold.set()
    self.called = threading.Event()

  def __call__(self, version, queries):
    self.calls.append([q.features["q"] for q in queries])
    self.threads.append(threading.get_ident())
    self.called.set()
    if not self.hold.wait(TIMEOUT):
      raise RuntimeError("the test never released the call")
    return [([q.features["q"]], [1.0]) for q in queries]


def request(*names):
  return [protocol.Query({"q": n}) for n in names]


def run(scenario):
  return asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_lone_request_is_not_delayed_by_the_wait_window():
  model = Model()

  async def scenario():
    batcher = batching.MicroBatcher(
      lambda: "v1", max_batch_size=64, max_wait=FOREVER, run=model
    )
    batcher.start()
    try:
      # Answered although the window is an hour: an idle batcher runs a
      # lone request at once (the old batcher waited the window out).
      answer = await batcher.submit(request("a"))
      return answer, batcher.stats, threading.get_ident()
    finally:
      await batcher.stop()

  answer, stats, loop_thread = run(scenario)
  assert answer == ("v1", [(["a"], [1.0])])
  assert model.calls == [["a"]]
  assert stats.waits == 0 and stats.batches == 1
  # Nothing else in flight: the loop's own thread made the call (no
  # hand-off to the model thread and back).
  assert model.threads == [loop_thread] and stats.inline == 1


def test_requests_arriving_during_a_call_share_the_next_call():
  model = Model()
  model.hold.clear()

  async def scenario():
    loop = asyncio.get_running_loop()
    # The server reports another request being received: the call goes to
    # the model thread, leaving the loop free to gather the next batch.
    batcher = batching.MicroBatcher(
      lambda: "v1", max_batch_size=3, run=model, in_flight=lambda: 2
    )
    batcher.start()
    try:
      first = asyncio.ensure_future(batcher.submit(request("a")))
      # The model thread is now inside the call for "a", held there.
      assert await loop.run_in_executor(None, model.called.wait, TIMEOUT)
      later = [
        asyncio.ensure_future(batcher.submit(r))
        for r in (request("b"), request("c", "d"), request("e"))
      ]
      await asyncio.sleep(0)  # The three submits run and queue up.
      model.hold.set()
      answers = await asyncio.gather(first, *later)
    finally:
      await batcher.stop()
    return answers, batcher.stats, threading.get_ident()

  answers, stats, loop_thread = run(scenario)
  # "a" ran alone at once; "b" and "c", "d" (3 queries, the maximum) that
  # queued during its call shared the next call without waiting; "e" did
  # not fit and started the third.
  assert model.calls == [["a"], ["b", "c", "d"], ["e"]]
  assert [results for _, results in answers] == [
    [(["a"], [1.0])],
    [(["b"], [1.0])],
    [(["c"], [1.0]), (["d"], [1.0])],
    [(["e"], [1.0])],
  ]
  assert stats.batches == 3 and stats.waits == 0
  assert stats.requests == 4 and stats.queries == 5
  assert loop_thread not in model.threads and stats.inline == 0


def test_the_wait_window_applies_only_to_a_batch_under_load():
  model = Model()

  async def scenario():
    batcher = batching.MicroBatcher(
      lambda: "v1", max_batch_size=3, max_wait=FOREVER, run=model
    )
    batcher.start()
    try:
      # Two requests queued together: the batch waits for more, and the
      # third, sent once the batcher has taken the first two, fills it.
      pair = [asyncio.ensure_future(batcher.submit(request(n))) for n in "ab"]
      while batcher.stats.waits == 0:
        await asyncio.sleep(0)
      third = await batcher.submit(request("c"))
      return [*(await asyncio.gather(*pair)), third], batcher.stats
    finally:
      await batcher.stop()

  answers, stats = run(scenario)
  # One call of three: the window ended when the batch was full, not when
  # its hour ran out.
  assert model.calls == [["a", "b", "c"]]
  assert [results for _, results in answers] == [
    [(["a"], [1.0])],
    [(["b"], [1.0])],
    [(["c"], [1.0])],
  ]
  assert stats.waits == 1 and stats.batches == 1
