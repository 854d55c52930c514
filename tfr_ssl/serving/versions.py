"""Index versions: found on disk, loaded beside the serving one, swapped.

Two layouts of the index directory are understood:
  * an index itself (it holds manifest.json): what `pipelines.build_index`
    writes to WORKDIR/index, replaced as a whole by one directory rename
    (`atomic.atomic_dir`). The service numbers the distinct directories it
    loads there 1, 2, ... in the order it sees them.
  * TF Serving's layout: numbered subdirectories (INDEX_DIR/1/, INDEX_DIR/2/,
    ...), each an index. As TF Serving's default policy does, the highest
    number that loads is served and is the version: a higher number that
    appears replaces it, and deleting the serving directory (a rollback)
    falls back to the highest one left. A number that was refused is passed
    over until its directory changes.

A refresh loads the newest candidate *beside* the serving version, checks
its manifest against the run's export (the same keys as
`workflow.load_retriever`), answers a probe query through both signatures
(the graphs are then warm, and a version that cannot answer is caught before
it serves), and only then replaces the serving reference in one assignment.
A batch takes the reference when it starts, so batches that started on the
old version finish on it; the old version is freed when the last one ends.
A candidate that fails any step is refused and remembered (it is not retried
until it changes on disk), and the serving version keeps serving. A serving
version whose directory is deleted with nothing to fall back to keeps
serving from memory (it was loaded whole), with a warning in the log.

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
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from tfr_ssl.data import contract
from tfr_ssl.serving import export
from tfr_ssl.serving import retrieval as serving

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
    signature_defs: Its SignatureDefs as TF Serving's metadata shows them.
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
  signature_defs: dict = dataclasses.field(default_factory=dict)
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

  def on_disk(self) -> bool:
    """Whether its directory still holds what was loaded from it."""
    try:
      return _identity(self.path) == self.identity
    except OSError:
      return False

  def summary(self) -> dict[str, Any]:
    """The facts about the serving version (the service's own status).

    `path` is the directory it was loaded from; `on_disk` says whether that
    directory still holds it. A rebuilt index renamed into the same path
    replaces the files while the loaded version serves on from memory: if
    that build was refused, the path holds the refused one, not this.
    """
    return {
      "version": str(self.number),
      "path": self.path,
      "on_disk": self.on_disk(),
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


def find_candidates(index_dir: str) -> list[Candidate]:
  """The indexes in `index_dir` (either layout), highest number first."""
  try:
    if os.path.exists(os.path.join(index_dir, serving.MANIFEST)):
      return [Candidate(index_dir, _identity(index_dir), None)]
    names = os.listdir(index_dir)
  except FileNotFoundError:
    # Replaced between the check and the stat: the next poll sees it.
    return []
  numbered = sorted(
    ((int(n), os.path.join(index_dir, n)) for n in names if n.isdigit()),
    reverse=True,
  )
  found = []
  for number, path in numbered:
    try:
      found.append(Candidate(path, _identity(path), number))
    except FileNotFoundError:  # No manifest (yet), or removed meanwhile.
      continue
  return found


def find_candidate(
  index_dir: str, passed_over: Collection[tuple] = ()
) -> Candidate | None:
  """The index to serve: the highest one whose identity is not passed over.

  Args:
    index_dir: The index directory (either layout).
    passed_over: Identities not to choose (refused versions).
  """
  for candidate in find_candidates(index_dir):
    if candidate.identity not in passed_over:
      return candidate
  return None


def read_signature_defs(path: str, features: list[str]) -> dict[str, Any]:
  """The SignatureDefs of the SavedModel at `path`, as TF Serving shows them.

  Read from saved_model.pb itself, so tensor names, dtypes and shapes are
  the model's own. Inputs are listed in signature order (features, then
  `exclude`); the proto's maps have no order of their own.
  """
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  order = {name: i for i, name in enumerate([*features, serving.EXCLUDE_KEY])}
  out = {}
  for name, signature in sorted(saved.meta_graphs[0].signature_def.items()):
    value = json_format.MessageToDict(
      signature,
      preserving_proto_field_name=True,
      always_print_fields_with_no_presence=True,
    )
    for key in ("inputs", "outputs"):
      value[key] = dict(
        sorted(
          value.get(key, {}).items(),
          key=lambda item: (order.get(item[0], len(order)), item[0]),
        )
      )
    out[name] = value
  return out


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
    self._gone_warned: tuple | None = None
    self._lock = threading.Lock()

  def load_initial(self) -> Version:
    """Loads the first version, or raises why it cannot serve.

    In TF Serving's layout the highest number that loads serves; the ones
    above it are refused (logged, and listed in the status).

    Raises:
      NoIndexError: no index in the directory.
      serving.IndexMismatchError: its manifest does not match the export.
      Exception: whatever loading the SavedModel raised.
    """
    candidates = find_candidates(self.index_dir)
    if not candidates:
      raise NoIndexError(
        f"{self.index_dir} holds no index (no manifest.json, and no numbered "
        "version directory with one): run pipelines.build_index first."
      )
    with self._lock:
      first_error = None
      for candidate in candidates:
        try:
          version = self._load_version(candidate)
        except Exception as e:
          if candidate is candidates[-1] and first_error is None:
            raise
          first_error = first_error or e
          self._refuse(candidate, e)
          continue
        self._swap(version)
        return version
      raise first_error

  def refresh(self) -> str:
    """Serves the highest version that loads, if it is not the serving one.

    Safe to call from any thread; a call while another runs waits for it.

    Returns:
      "unchanged", "loaded", "refused" or "retry" (the directory changed
      while it loaded).
    """
    with self._lock:
      current = self.current
      candidate = find_candidate(self.index_dir, self._refused)
      if candidate is None:
        if current is not None and not current.on_disk():
          self._warn_gone(current)
        return "unchanged"
      if current is not None and candidate.identity == current.identity:
        return "unchanged"
      if (
        current is not None
        and candidate.number is not None
        and current.number > candidate.number
      ):
        if os.path.exists(current.path):
          # Its directory was rewritten with a build that was refused: the
          # loaded copy is still the newest version that works.
          return "unchanged"
        log.warning(
          "Version %d is gone from %s: falling back to version %d.",
          current.number,
          self.index_dir,
          candidate.number,
        )
      self.loading = candidate
      try:
        version = self._load_version(candidate)
      except _ChangedError:
        log.info("%s changed while loading; retrying.", candidate.path)
        return "retry"
      except Exception as e:
        self._refuse(candidate, e)
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

  def _warn_gone(self, current: Version) -> None:
    """Logs once that the serving version's directory is gone."""
    if self._gone_warned == current.identity:
      return
    self._gone_warned = current.identity
    log.warning(
      "The directory of serving version %d (%s) no longer holds it, and no "
      "other version in %s loads: serving it from memory.",
      current.number,
      current.path,
      self.index_dir,
    )

  def _refuse(self, candidate: Candidate, error: Exception) -> None:
    """Remembers a candidate that failed, and logs why (one line)."""
    current = self.current
    number = self._number_for(candidate)
    message = one_line(error)
    log.warning(
      "Refused index version %d at %s (%s): %s",
      number,
      candidate.path,
      f"version {current.number} keeps serving" if current else "not serving",
      message,
      exc_info=not isinstance(error, serving.IndexMismatchError | OSError),
    )
    self._refused[candidate.identity] = {
      "version": number,
      "path": candidate.path,
      "error": message,
      "at": time.time(),
    }
    while len(self._refused) > HISTORY:
      self._refused.pop(next(iter(self._refused)))

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
    names = [f.name for f in features]
    signature_defs = read_signature_defs(candidate.path, names)
    _probe(model, names)
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
      signature_defs=signature_defs,
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
    """TF Serving's GetModelStatus response (its keys only).

    One row per version number, the most telling first: the serving one
    (AVAILABLE), one loading, refused ones (END with the reason), retired
    ones (END). A number served again after a fallback is listed once.

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
    seen = set()
    listed = []
    for v, state, code, message in rows:
      if v in seen or (number is not None and v != number):
        continue
      seen.add(v)
      listed.append(
        {
          "version": str(v),
          "state": state,
          "status": {"error_code": code, "error_message": message},
        }
      )
    return {"model_version_status": listed}

  def refused(self) -> list[dict[str, Any]]:
    """The refused versions, newest first: version, path, error, at."""
    return [dict(r) for r in reversed(list(self._refused.values()))]


class _ChangedError(Exception):
  """The candidate directory changed while it was being loaded."""


def _probe(model: serving.RetrievalModel, names: list[str]) -> None:
  """Answers one unknown query through both signatures, or raises."""
  features = {n: np.array([""], dtype=object) for n in names}
  for exclude in (None, [[""]]):
    _, ids = model(features, exclude=exclude)
    if ids.shape[0] != 1:
      raise ValueError(f"the probe query returned {ids.shape[0]} rows, not 1")


def one_line(error: BaseException) -> str:
  """`Type: first line of the message`, at most 500 characters."""
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  return f"{type(error).__name__}: {first}"[:500]
