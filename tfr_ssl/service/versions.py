"""Index versions: found on disk, loaded beside the serving one, swapped.

Two layouts of the index directory are understood:
  * an index itself (it holds manifest.json): what `pipelines.build_index`
    writes to WORKDIR/index, replaced as a whole by one directory rename
    (`atomic.atomic_dir`). The service numbers the distinct directories it
    loads there 1, 2, ... in the order it sees them.
  * TF Serving's layout: numbered subdirectories (INDEX_DIR/1/, INDEX_DIR/2/,
    ...), each an index; the highest number is served and is the version.

A refresh loads the newest candidate *beside* the serving version, checks
its manifest against the run's export (the same keys as
`workflow.load_retriever`), answers a probe query through both signatures
(the graphs are then warm, and a version that cannot answer is caught before
it serves), and only then replaces the serving reference in one assignment.
A batch takes the reference when it starts, so batches that started on the
old version finish on it; the old version is freed when the last one ends.
A candidate that fails any step is refused and remembered (it is not retried
until it changes on disk), and the serving version keeps serving.

A directory is identified by its (device, inode) and its manifest's mtime: a
directory renamed into place has a new inode. If the identity changes while
a candidate loads, the files read may come from two builds: the load is
discarded and retried at the next poll.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfr_ssl import export, serving
from tfr_ssl.data import contract

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
# Refused and retired versions listed in the status, newest first.
HISTORY = 10


class NoIndexError(FileNotFoundError):
  """The index directory holds no index (yet)."""


@dataclasses.dataclass(frozen=True)
class QueryFeature:
  """A raw query feature: its name and kind (categorical or multi)."""

  name: str
  kind: str

  @property
  def multi(self) -> bool:
    return self.kind == contract.MULTI_CATEGORICAL


@dataclasses.dataclass(frozen=True)
class Candidate:
  """An index directory on disk that may become a version."""

  path: str
  identity: tuple
  number: int | None  # The directory's number in TF Serving's layout.


@dataclasses.dataclass
class Version:
  """A loaded, checked index that can serve.

  Attributes:
    number: The version number the status and the paths use.
    path: Its directory.
    model: The loaded retrieval model.
    manifest: Its manifest.
    features: Its raw query features, in signature order.
    items: item id -> raw item features (for display).
    identity: The directory identity it was loaded from.
    loaded_at: Unix time it started serving.
    load_seconds: Load, check and probe time.
  """

  number: int
  path: str
  model: serving.RetrievalModel
  manifest: dict
  features: list[QueryFeature]
  items: dict[str, dict]
  identity: tuple
  loaded_at: float = 0.0
  load_seconds: float = 0.0

  @property
  def k(self) -> int:
    return self.model.k

  @property
  def feature_names(self) -> list[str]:
    return [f.name for f in self.features]

  def describe(self) -> str:
    """e.g. "version 2: exact search over 20,000 items, k=100"."""
    kind = self.manifest.get("index", {}).get("kind", "unknown")
    kind = "ScaNN" if kind == "scann" else kind
    return (
      f"version {self.number}: {kind} search over "
      f"{int(self.manifest.get('num_items', 0)):,} items, k={self.k}"
    )

  def summary(self) -> dict[str, Any]:
    """The facts the status reports about the serving version."""
    return {
      "version": str(self.number),
      "path": self.path,
      "model_id": self.manifest.get("model_id"),
      "index": self.manifest.get("index", {}).get("kind"),
      "num_items": self.manifest.get("num_items"),
      "k": self.k,
      "added_items": (self.manifest.get("added_items") or {}).get("count", 0),
      "loaded_at": self.loaded_at,
      "load_seconds": round(self.load_seconds, 3),
    }


def _identity(path: str) -> tuple:
  """(device, inode, manifest mtime) of an index directory."""
  info = os.stat(path)
  manifest = os.stat(os.path.join(path, serving.MANIFEST))
  return (info.st_dev, info.st_ino, manifest.st_mtime_ns, manifest.st_size)


def find_candidate(index_dir: str) -> Candidate | None:
  """The newest index in `index_dir` (either layout), or None."""
  try:
    if os.path.exists(os.path.join(index_dir, serving.MANIFEST)):
      return Candidate(index_dir, _identity(index_dir), None)
    numbered = []
    for name in os.listdir(index_dir):
      path = os.path.join(index_dir, name)
      if name.isdigit() and os.path.exists(
        os.path.join(path, serving.MANIFEST)
      ):
        numbered.append((int(name), path))
    if not numbered:
      return None
    number, path = max(numbered)
    return Candidate(path, _identity(path), number)
  except FileNotFoundError:
    # Replaced between listing and stat: the next poll sees the new one.
    return None


def query_features(manifest: Mapping[str, Any]) -> list[QueryFeature]:
  """The query features of an index with their kinds, in signature order."""
  names = list(manifest["query_features"])
  kinds = {}
  if "schema" in manifest:
    schema = contract.Schema.from_dict(manifest["schema"])
    task = manifest.get("task", "user_to_item")
    kinds = {f.name: f.kind for f in export.query_features(schema, task)}
  return [QueryFeature(n, kinds.get(n, contract.CATEGORICAL)) for n in names]


def read_items(path: str) -> dict[str, dict]:
  """item id -> raw features, from an items.jsonl ({} if it is missing)."""
  if not os.path.exists(path):
    return {}
  items = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        items[record["id"]] = record["features"]
  return items


def expected_manifest(export_dir: str) -> dict[str, Any]:
  """What an index must match to serve this run's export.

  The keys are those `workflow.load_retriever` checks.

  Raises:
    serving.IndexMismatchError: the run has no export.
  """
  path = os.path.join(export_dir, "manifest.json")
  try:
    manifest = export.read_manifest(export_dir)
  except FileNotFoundError:
    raise serving.IndexMismatchError(
      f"{path} does not exist: run pipelines.export first."
    ) from None
  except json.JSONDecodeError as e:
    raise serving.IndexMismatchError(f"{path}: not valid JSON ({e})") from None
  return {
    "model_id": manifest["model_id"],
    "output_dim": manifest["output_dim"],
    "query_features": manifest["query_features"],
  }


class VersionManager:
  """Holds the serving version and replaces it when a newer one checks out.

  Args:
    index_dir: The index directory (either layout, see the module doc).
    export_dir: The run's export, whose manifest a version must match.
    load: Loads a retrieval model from a path (tests substitute it).

  Attributes:
    current: The serving Version (None before the first load). Read it
      once per batch: it may be replaced at any time.
  """

  def __init__(self, index_dir: str, export_dir: str, load=None):
    self.index_dir = os.path.abspath(index_dir)
    self.export_dir = os.path.abspath(export_dir)
    self._load = load or serving.load_retrieval_model
    self.current: Version | None = None
    self.loading: Candidate | None = None
    self._refused: dict[tuple, dict] = {}
    self._retired: list[dict] = []
    self._next_number = 1
    self._lock = threading.Lock()

  def load_initial(self) -> Version:
    """Loads the first version, or raises why it cannot serve.

    Raises:
      NoIndexError: no index in the directory.
      serving.IndexMismatchError: its manifest does not match the export.
      Exception: whatever loading the SavedModel raised.
    """
    candidate = find_candidate(self.index_dir)
    if candidate is None:
      raise NoIndexError(
        f"{self.index_dir} holds no index (no manifest.json, and no numbered "
        "version directory with one): run pipelines.build_index first."
      )
    with self._lock:
      version = self._load_version(candidate)
      self._swap(version)
    return version

  def refresh(self) -> str:
    """Loads and swaps in a newer version if there is one.

    Safe to call from any thread; a call while another runs waits for it.

    Returns:
      "unchanged", "loaded", "refused" or "retry" (the directory changed
      while it loaded).
    """
    with self._lock:
      candidate = find_candidate(self.index_dir)
      if candidate is None:
        return "unchanged"
      current = self.current
      if current is not None and candidate.identity == current.identity:
        return "unchanged"
      if candidate.identity in self._refused:
        return "unchanged"
      if (
        current is not None
        and candidate.number is not None
        and candidate.number < current.number
      ):
        # Numbered layout: never go back to an older number by itself.
        return "unchanged"
      self.loading = candidate
      try:
        version = self._load_version(candidate)
      except _ChangedError:
        log.info("%s changed while loading; retrying.", candidate.path)
        return "retry"
      except Exception as e:
        number = self._number_for(candidate)
        message = _one_line(e)
        log.warning(
          "Refused index version %d at %s (the serving version %s keeps "
          "serving): %s",
          number,
          candidate.path,
          current.number if current else None,
          message,
          exc_info=not isinstance(e, serving.IndexMismatchError),
        )
        self._refused[candidate.identity] = {
          "version": number,
          "path": candidate.path,
          "error": message,
          "at": time.time(),
        }
        while len(self._refused) > HISTORY:
          self._refused.pop(next(iter(self._refused)))
        return "refused"
      finally:
        self.loading = None
      self._swap(version)
      log.info(
        "Serving %s (loaded in %.2f s).",
        version.describe(),
        version.load_seconds,
      )
      return "loaded"

  def _number_for(self, candidate: Candidate) -> int:
    if candidate.number is not None:
      return candidate.number
    number = self._next_number
    self._next_number += 1
    return number

  def _load_version(self, candidate: Candidate) -> Version:
    started = time.perf_counter()
    expected = expected_manifest(self.export_dir)
    model = self._load(candidate.path, expected)
    features = query_features(model.manifest)
    items_path = os.path.join(candidate.path, ITEMS_FILE)
    if not os.path.exists(items_path):
      items_path = os.path.join(self.export_dir, ITEMS_FILE)
    items = read_items(items_path)
    _probe(model, [f.name for f in features])
    try:
      changed = _identity(candidate.path) != candidate.identity
    except FileNotFoundError:
      changed = True
    if changed:
      raise _ChangedError()
    return Version(
      number=self._number_for(candidate),
      path=candidate.path,
      model=model,
      manifest=model.manifest,
      features=features,
      items=items,
      identity=candidate.identity,
      load_seconds=time.perf_counter() - started,
    )

  def _swap(self, version: Version) -> None:
    old = self.current
    version.loaded_at = time.time()
    self.current = version  # One reference assignment: the swap.
    if old is not None:
      self._retired.insert(0, {"version": old.number, "path": old.path})
      del self._retired[HISTORY:]

  def status(self, number: int | None = None) -> dict[str, Any]:
    """TF Serving's GetModelStatus response, plus the serving version's facts.

    Args:
      number: Report this version only (None: all known).
    """
    rows = []
    current = self.current
    loading = self.loading
    if current is not None:
      rows.append((current.number, "AVAILABLE", "OK", ""))
    if loading is not None and loading.number is not None:
      rows.append((loading.number, "LOADING", "OK", ""))
    for refused in reversed(list(self._refused.values())):
      rows.append(
        (refused["version"], "END", "FAILED_PRECONDITION", refused["error"])
      )
    for retired in self._retired:
      rows.append((retired["version"], "END", "OK", ""))
    out = {
      "model_version_status": [
        {
          "version": str(v),
          "state": state,
          "status": {"error_code": code, "error_message": message},
        }
        for v, state, code, message in rows
        if number is None or v == number
      ]
    }
    if current is not None:
      out["serving"] = current.summary()
    return out


class _ChangedError(Exception):
  """The candidate directory changed while it was being loaded."""


def _probe(model: serving.RetrievalModel, names: list[str]) -> None:
  """Answers one unknown query through both signatures, or raises."""
  features = {n: np.array([""], dtype=object) for n in names}
  for exclude in (None, [[""]]):
    _, ids = model(features, exclude=exclude)
    if ids.shape[0] != 1:
      raise ValueError(f"the probe query returned {ids.shape[0]} rows, not 1")


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  return f"{type(error).__name__}: {first}"[:500]
