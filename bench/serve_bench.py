"""Serving benchmark: the HTTP service vs calling the SavedModel in-process.

On a trained run (the demo model of `make demo` by default), for an exact
and a ScaNN index of the same export:
  * the HTTP service (`pipelines.serve`, a child process on a free loopback
    port) under 1, 8 and 32 concurrent clients, each sending one query per
    request (`top_k` 10), for a fixed time per level: queries per second,
    p50 and p99 latency, failed requests, and the mean batch the service
    formed (micro-batching);
  * the same SavedModel called in this process (`serving.RetrievalModel`,
    one query per call, from 1, 8 and 32 threads): the cost without HTTP,
    JSON and batching; the difference and ratio of the two are the serving
    overhead. The two alternate in short slices (--slices per level), so
    that a background load that changes during the run moves both.
Then a refresh under load: with 8 clients running, a new index (the same
export plus 100 new items, built beforehand) is renamed into place; the
table gives the time from the rename until the service serves it (poll
interval included), the service's own load time, the latency while it
loads, and the failed requests (there must be none).

The clients are coroutines in this process, each on one keep-alive
connection, sending requests encoded before the clock starts (`Connection`:
a minimal HTTP/1.1 client, far cheaper per request than aiohttp's); they
share the 2 cores with the service, so at 32 clients the clients' own CPU
is still part of what is measured. Bounded: every level runs --seconds
(and at most --max_requests), the whole benchmark a few minutes.

Usage:
  .venv/bin/python bench/serve_bench.py [--workdir workdir/demo]
      [--seconds 5] [--slices 5] [--out bench/results/serve.md]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import aiohttp
import numpy as np
import tensorflow as tf

from tfr_ssl import data as data_lib
from tfr_ssl import workflow
from tfr_ssl.serving import export
from tfr_ssl.serving import retrieval as serving
from tfr_ssl.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "retrieval"
LEVELS = (1, 8, 32)
TOP_K = 10
VARIANTS = {
  "exact": {"index.exact_below": 10**9},
  "ScaNN": {"index.exact_below": 0, "index.reorder": 1000},
}
NEW_ITEMS = 100


def copy_run(workdir: str, target: str) -> str:
  """A copy of a run without its index, checkpoints or evaluation."""
  shutil.copytree(
    workdir,
    target,
    ignore=shutil.ignore_patterns(
      "index", "checkpoints", "tensorboard", "eval", ".*"
    ),
  )
  return target


def sample_queries(workdir: str, n: int, seed: int = 0) -> list[dict]:
  config = train.read_config(workdir)
  prepared = data_lib.load(config.data)
  table, features = (
    (prepared.items, prepared.schema.item_features)
    if config.model.task == "item_to_item"
    else (prepared.queries, prepared.schema.query_features)
  )
  rows = np.random.default_rng(seed).choice(
    len(next(iter(table.values()))), n, replace=False
  )
  raw = export.raw_features(table, features, prepared.vocabularies, rows)
  return [{k: str(v[i]) for k, v in raw.items()} for i in range(n)]


def new_items_csv(workdir: str, path: str, n: int) -> str:
  """n new items: the content of existing items under new ids."""
  manifest = export.read_manifest(os.path.join(workdir, "export"))
  names = manifest["item_features"]
  item_id = manifest["schema"]["item_id"]
  with open(os.path.join(workdir, "export", "items.jsonl")) as f:
    items = [json.loads(next(f)) for _ in range(n)]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(names)
    for i, item in enumerate(items):
      writer.writerow(
        [f"new-{i}" if n_ == item_id else item["features"][n_] for n_ in names]
      )
  return path


def summarise(latencies: list[float], seconds: float, failures: int) -> dict:
  ms = np.array(latencies) * 1000.0
  return {
    "latencies": list(latencies),
    "seconds": seconds,
    "requests": len(latencies),
    "qps": len(latencies) / seconds if seconds else 0.0,
    "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
    "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    "failures": failures,
  }


class Service:
  """`pipelines.serve` in a child process on a free loopback port."""

  def __init__(self, workdir: str, log_path: str):
    self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop)
    self.process = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "pipelines.serve",
        f"--workdir={workdir}",
        "--port=0",
        "--poll_seconds=0.25",
        "--nosamples",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
    )
    found = {}

    def read():
      for line in self.process.stdout:
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if line.startswith("Serving") and match:
          found["url"] = match.group(0)
          return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(300)
    if "url" not in found:
      self.stop()
      raise RuntimeError(f"the service did not start; see {log_path}")
    self.url = found["url"]

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(30)
    self.process.stdout.close()
    self.log.close()


class Connection:
  """A minimal HTTP/1.1 keep-alive connection for the load's requests.

  It writes a request encoded beforehand and reads the status line, the
  Content-Length and the body, nothing else: with aiohttp's client the
  client's own CPU per request (session, headers, JSON encoding of the
  body, response objects) was a large part of one client's latency, which
  is not the service's.

  Args:
    url: The service's base URL (http://host:port).
  """

  def __init__(self, url: str):
    parts = urllib.parse.urlsplit(url)
    self.host, self.port = parts.hostname, parts.port
    self._reader = self._writer = None

  def request(self, path: str, body: bytes) -> bytes:
    """The bytes of a POST of `body` (JSON) to `path`."""
    head = (
      f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
      "Content-Type: application/json\r\n"
      f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body

  async def send(self, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one request; reconnects if needed."""
    if self._writer is None:
      self._reader, self._writer = await asyncio.open_connection(
        self.host, self.port
      )
    self._writer.write(request)
    head = await self._reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
      name, _, value = line.partition(b":")
      name = name.strip().lower()
      if name == b"content-length":
        length = int(value)
      elif name == b"connection":
        close = value.strip().lower() == b"close"
    body = await self._reader.readexactly(length)
    if close:
      self.close()
    return status, body

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self._reader = self._writer = None


async def http_load(
  url: str,
  queries: list[dict],
  clients: int,
  seconds: float,
  max_requests: int,
  on_start=None,
) -> tuple[dict, list[float], list[tuple[float, float]]]:
  """Closed-loop clients posting one query per request."""
  path = f"/v1/models/{MODEL}:predict"
  latencies, timeline = [], []
  failures = 0
  connections = [Connection(url) for _ in range(clients)]
  # Encoded before the clock starts, as the in-process inputs are.
  requests = [
    connections[0].request(
      path, json.dumps({"instances": [q], "top_k": TOP_K}).encode()
    )
    for q in queries
  ]
  stop_at = time.perf_counter() + seconds
  counter = iter(range(max_requests))

  async def client(connection, seed):
    nonlocal failures
    i = seed
    while time.perf_counter() < stop_at and next(counter, None) is not None:
      request = requests[i % len(requests)]
      i += clients
      started = time.perf_counter()
      try:
        async with asyncio.timeout(60):
          status, payload = await connection.send(request)
        ok = status == 200 and b'"predictions"' in payload
      except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        connection.close()
        ok = False
      done = time.perf_counter()
      if ok:
        latencies.append(done - started)
        timeline.append((started, done - started))
      else:
        failures += 1

  tasks = [client(c, s) for s, c in enumerate(connections)]
  started = time.perf_counter()
  if on_start is not None:
    on_start()
  try:
    await asyncio.gather(*tasks)
  finally:
    for connection in connections:
      connection.close()
  elapsed = time.perf_counter() - started
  return summarise(latencies, elapsed, failures), latencies, timeline


def status(url: str) -> dict:
  """The service's own facts: what serves (`serving`) and `batching`."""

  async def get():
    async with (
      aiohttp.ClientSession() as session,
      session.get(f"{url}/ui/model") as response,
    ):
      return await response.json()

  return asyncio.run(get())


def without_latencies(value):
  """`value` without its lists of latencies (for printing)."""
  if isinstance(value, dict):
    return {
      k: without_latencies(v) for k, v in value.items() if k != "latencies"
    }
  return value


def combine(parts: list[dict]) -> dict:
  """One summary of several slices of the same load."""
  return summarise(
    [x for p in parts for x in p["latencies"]],
    sum(p["seconds"] for p in parts),
    sum(p["failures"] for p in parts),
  )


def in_process_load(
  model, queries: list[dict], clients: int, seconds: float, max_requests: int
) -> dict:
  """Threads calling the SavedModel with one query per call."""
  names = model.query_features
  inputs = [
    {n: tf.constant([q.get(n, "")]) for n in names} for q in queries[:512]
  ]
  latencies, lock = [], threading.Lock()
  stop_at = time.perf_counter() + seconds
  counter = iter(range(max_requests))

  def worker(seed):
    i, mine = seed, []
    while time.perf_counter() < stop_at and next(counter, None) is not None:
      started = time.perf_counter()
      _, ids = model(inputs[i % len(inputs)])
      ids.numpy()
      mine.append(time.perf_counter() - started)
      i += clients
    with lock:
      latencies.extend(mine)

  for q in inputs[:5]:
    model(q)
  threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
  started = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return summarise(latencies, time.perf_counter() - started, 0)


def bench_variant(name, workdir, queries, args, log_dir) -> dict:
  """HTTP and in-process at each level, in alternating slices.

  The two alternate in `--slices` slices per level, so that both see the
  same background load on a shared machine (a load that changes during
  the run moves both, not their ratio).
  """
  print(f"[{name}] starting the service", flush=True)
  service = Service(workdir, os.path.join(log_dir, f"serve_{name}.log"))
  model = serving.load_retrieval_model(os.path.join(workdir, "index"))
  seconds = args.seconds / args.slices
  cap = max(1, args.max_requests // args.slices)
  rows = {}
  try:
    asyncio.run(http_load(service.url, queries, 4, 1.0, 10**6))  # warm-up
    for clients in LEVELS:
      http, local = [], []
      before = status(service.url)["batching"]
      for _ in range(args.slices):
        http.append(
          asyncio.run(http_load(service.url, queries, clients, seconds, cap))[0]
        )
        local.append(in_process_load(model, queries, clients, seconds, cap))
      after = status(service.url)["batching"]
      batches = after["batches"] - before["batches"]
      result = combine(http)
      result["mean_batch"] = (
        (after["queries"] - before["queries"]) / batches if batches else 0.0
      )
      rows[("http", clients)] = result
      rows[("in-process", clients)] = combine(local)
      for kind in ("http", "in-process"):
        shown = without_latencies(rows[(kind, clients)])
        print(f"[{name}] {kind} c={clients}: {shown}", flush=True)
  finally:
    service.stop()
  manifest = serving.read_manifest(os.path.join(workdir, "index"))
  return {"rows": rows, "manifest": manifest}


def bench_refresh(workdir, next_index, queries, args, log_dir) -> dict:
  """Renames a prebuilt index into place under load; measures the swap."""
  service = Service(workdir, os.path.join(log_dir, "serve_refresh.log"))
  try:
    index_dir = os.path.join(workdir, "index")
    swap = {}

    seconds = max(args.seconds * 3, 15.0)

    def rename_later():
      time.sleep(seconds / 3)
      old = index_dir + ".old"
      os.rename(index_dir, old)
      os.rename(next_index, index_dir)
      swap["at"] = time.perf_counter()
      shutil.rmtree(old)

    def on_start():
      threading.Thread(target=rename_later, daemon=True).start()

    done = {}

    def watch():
      deadline = time.perf_counter() + seconds + 60
      while time.perf_counter() < deadline:
        if "at" in swap:
          serving_now = status(service.url)["serving"]
          if serving_now["version"] == "2":
            done["at"] = time.perf_counter()
            done["status"] = serving_now
            return
        time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result, _, timeline = asyncio.run(
      http_load(service.url, queries, 8, seconds, 10**7, on_start=on_start)
    )
    watcher.join(120)
    if "at" not in done:
      raise RuntimeError("the new index was not served in time")
    during = [
      latency
      for started, latency in timeline
      if swap["at"] <= started <= done["at"]
    ]
    before = [latency for started, latency in timeline if started < swap["at"]]
    return {
      "load": result,
      "seconds_to_serve": done["at"] - swap["at"],
      "load_seconds": done["status"]["load_seconds"],
      "num_items": done["status"]["num_items"],
      "during": summarise(during, done["at"] - swap["at"], 0),
      "before": summarise(before, swap["at"] - timeline[0][0], 0),
    }
  finally:
    service.stop()


def fmt(x: float, digits: int = 1) -> str:
  return f"{x:,.{digits}f}"


def report(variants: dict, refresh: dict, args, total_seconds: float) -> str:
  lines = [
    "# Serving benchmark: HTTP service vs the SavedModel in-process",
    "",
    f"Command: `.venv/bin/python bench/serve_bench.py --workdir={args.workdir}"
    f" --seconds={args.seconds:g} --slices={args.slices}`",
    "",
    f"Machine: {platform.machine()}, {os.cpu_count()} shared cores (Python "
    f"{platform.python_version()}, TF {tf.__version__}); other jobs were "
    "running: compare ratios, not absolute rates. Clients and service share "
    "the cores (loopback only).",
    "",
    f"Model: the run at `{args.workdir}`; one query per request, top_k "
    f"{TOP_K}, {args.seconds:g} s per level (closed loop: each client sends "
    "its next request when the last is answered). *In-process*: "
    "`serving.RetrievalModel` called with one query per call from N threads "
    "(no HTTP, JSON or batching). HTTP and in-process alternate in "
    f"{args.slices} slices per level, so both see the same background load. "
    "*Overhead*: HTTP p50 - in-process p50 (ms) and HTTP p50 / in-process "
    "p50 at the same concurrency, and in-process QPS / HTTP QPS. *Batch*: "
    "mean queries per model call the service formed.",
    "",
    "| index | clients | HTTP QPS | HTTP p50 ms | HTTP p99 ms | batch | "
    "failed | in-process QPS | in-process p50 ms | in-process p99 ms | "
    "p50 diff ms | p50 ratio | QPS ratio |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, result in variants.items():
    settings = result["manifest"]["index"]
    label = f"{name} ({result['manifest']['num_items']:,} items"
    if settings["kind"] == "scann":
      label += (
        f", {settings['num_leaves']} leaves, "
        f"{settings['num_leaves_to_search']} searched, reorder "
        f"{settings['num_reordering_candidates']}"
      )
    label += ")"
    for clients in LEVELS:
      h = result["rows"][("http", clients)]
      p = result["rows"][("in-process", clients)]
      lines.append(
        f"| {label} | {clients} | {fmt(h['qps'], 0)} | {fmt(h['p50'])} | "
        f"{fmt(h['p99'])} | {fmt(h['mean_batch'])} | {h['failures']} | "
        f"{fmt(p['qps'], 0)} | {fmt(p['p50'])} | {fmt(p['p99'])} | "
        f"{h['p50'] - p['p50']:+.1f} | {h['p50'] / p['p50']:.1f}x | "
        f"{p['qps'] / h['qps']:.2f}x |"
      )
  r = refresh
  lines += [
    "",
    "## Refresh under load",
    "",
    f"8 clients for {fmt(r['load']['requests'] / r['load']['qps'], 0)} s "
    "against the exact index; a third of the way in, a prebuilt index of the "
    f"same export plus {NEW_ITEMS} new items (`build_index --add_items`) is "
    "renamed into WORKDIR/index, as build_index does. The service polls "
    "every 0.25 s.",
    "",
    "| requests | failed | rename -> serving s | service load s | "
    "p50 / p99 ms before | p50 / p99 ms while loading | items after |",
    "|---|---|---|---|---|---|---|",
    f"| {r['load']['requests']:,} | {r['load']['failures']} | "
    f"{r['seconds_to_serve']:.2f} | {r['load_seconds']:.2f} | "
    f"{fmt(r['before']['p50'])} / {fmt(r['before']['p99'])} | "
    f"{fmt(r['during']['p50'])} / {fmt(r['during']['p99'])} | "
    f"{r['num_items']:,} |",
    "",
    f"Total benchmark time {total_seconds:.0f} s.",
    "",
  ]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/demo")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--max_requests", type=int, default=50_000)
  parser.add_argument(
    "--slices",
    type=int,
    default=5,
    help="HTTP and in-process alternate in this many slices per level",
  )
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--out", default="bench/results/serve.md")
  parser.add_argument(
    "--variants", default=",".join(VARIANTS), help="exact,ScaNN"
  )
  args = parser.parse_args()
  started = time.perf_counter()
  for name in ("export/manifest.json", "config.json"):
    if not os.path.exists(os.path.join(args.workdir, name)):
      sys.exit(
        f"error: {args.workdir}/{name} is missing: run `make demo` (or "
        "train and export a run) and pass --workdir."
      )
  queries = sample_queries(args.workdir, args.queries)
  tmp = tempfile.mkdtemp(prefix="serve_bench-")
  try:
    variants = {}
    for name in args.variants.split(","):
      run = copy_run(args.workdir, os.path.join(tmp, name))
      print(f"[{name}] building the index", flush=True)
      workflow.build_index_run(run, VARIANTS[name])
      variants[name] = bench_variant(name, run, queries, args, tmp)
    # The refresh: the next index is built first, then swapped in.
    current = copy_run(args.workdir, os.path.join(tmp, "refresh"))
    workflow.build_index_run(current, VARIANTS["exact"])
    following = copy_run(args.workdir, os.path.join(tmp, "next"))
    workflow.build_index_run(
      following,
      VARIANTS["exact"],
      add_items=new_items_csv(
        args.workdir, os.path.join(tmp, "new.csv"), NEW_ITEMS
      ),
    )
    refresh = bench_refresh(
      current, os.path.join(following, "index"), queries, args, tmp
    )
    print(f"[refresh] {without_latencies(refresh)}", flush=True)
    text = report(variants, refresh, args, time.perf_counter() - started)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(text)
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
