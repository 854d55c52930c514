r"""Serves a run's retrieval index over HTTP (TF Serving's REST API).

Loads WORKDIR/index (checked against WORKDIR/export), binds --host:--port
(loopback by default) and answers until SIGINT or SIGTERM, finishing the
requests in flight. A newer index (a rebuilt WORKDIR/index, or a higher
numbered directory in TF Serving's layout under --index_dir) is picked up
every --poll_seconds, or at once on SIGHUP, without dropping a request; one
that fails to load or was built for another export is refused and the old
one keeps serving. A page for people is at /. See tfr_ssl/service/ and the
README's "Serving" section.

Example:
  python -m pipelines.serve --workdir=runs/cfm --port=8501
  curl -d '{"instances": [{"user_id": "u1"}], "top_k": 5}' \
      http://127.0.0.1:8501/v1/models/retrieval:predict
"""

import ipaddress
import json
import logging
import sys

from absl import app, flags

from pipelines import common
from tfr_ssl import service

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
_DEFAULTS = service.Options()
_HOST = flags.DEFINE_string(
  "host",
  _DEFAULTS.host,
  "Address to bind; loopback by default (put a proxy in front to serve "
  "other machines).",
)
_PORT = flags.DEFINE_integer(
  "port", _DEFAULTS.port, "TCP port (0: any free port, printed at start)."
)
_MODEL_NAME = flags.DEFINE_string(
  "model_name", _DEFAULTS.model_name, "NAME in /v1/models/NAME."
)
_INDEX_DIR = flags.DEFINE_string(
  "index_dir",
  None,
  "Index directory (default WORKDIR/index): an index, or numbered version "
  "directories (TF Serving's layout; the highest is served).",
)
_POLL = flags.DEFINE_float(
  "poll_seconds",
  _DEFAULTS.poll_seconds,
  "How often to look for a newer index (0: only on SIGHUP).",
)
_MAX_BATCH = flags.DEFINE_integer(
  "max_batch_size", _DEFAULTS.max_batch_size, "Queries per model call."
)
_BATCH_WAIT = flags.DEFINE_float(
  "batch_wait_ms",
  _DEFAULTS.batch_wait_ms,
  "How long the first query of a batch waits for others (ms).",
)
_MAX_QUEUE = flags.DEFINE_integer(
  "max_queue",
  _DEFAULTS.max_queue,
  "Queries waiting at most; beyond it requests get 503.",
)
_MAX_BODY = flags.DEFINE_integer(
  "max_body_bytes", _DEFAULTS.max_body_bytes, "Request body limit (413)."
)
_MAX_INSTANCES = flags.DEFINE_integer(
  "max_instances", _DEFAULTS.max_instances, "Queries per request."
)
_MAX_EXCLUDE = flags.DEFINE_integer(
  "max_exclude", _DEFAULTS.max_exclude, "Excluded item ids per query."
)
_SAMPLES = flags.DEFINE_bool(
  "samples",
  _DEFAULTS.samples,
  "Offer sample queries and users' histories on the page (read from the "
  "run's cached dataset, if it is there).",
)
_ACCESS_LOG = flags.DEFINE_bool(
  "access_log", _DEFAULTS.access_log, "Log every request."
)


def _options() -> service.Options:
  for name, flag in (
    ("port", _PORT),
    ("max_batch_size", _MAX_BATCH),
    ("max_queue", _MAX_QUEUE),
    ("max_body_bytes", _MAX_BODY),
    ("max_instances", _MAX_INSTANCES),
    ("max_exclude", _MAX_EXCLUDE),
  ):
    low = 0 if name == "port" else 1
    if flag.value < low or (name == "port" and flag.value > 65535):
      raise app.UsageError(f"--{name}={flag.value} is out of range.")
  for name, flag in (("poll_seconds", _POLL), ("batch_wait_ms", _BATCH_WAIT)):
    if flag.value < 0:
      raise app.UsageError(f"--{name} must be >= 0, got {flag.value}.")
  return service.Options(
    host=_HOST.value,
    port=_PORT.value,
    model_name=_MODEL_NAME.value,
    index_dir=_INDEX_DIR.value,
    poll_seconds=_POLL.value,
    max_batch_size=_MAX_BATCH.value,
    batch_wait_ms=_BATCH_WAIT.value,
    max_queue=_MAX_QUEUE.value,
    max_body_bytes=_MAX_BODY.value,
    max_instances=_MAX_INSTANCES.value,
    max_exclude=_MAX_EXCLUDE.value,
    samples=_SAMPLES.value,
    access_log=_ACCESS_LOG.value,
  )


def _announce(server: service.Server) -> None:
  version = server.versions.current
  name = server.options.model_name
  example = {"instances": [{version.feature_names[0]: "..."}], "top_k": 5}
  print(
    f"Serving model {name!r} {version.describe()} at {server.url}/\n"
    f"  status:   curl {server.url}/v1/models/{name}\n"
    f"  predict:  curl -d '{json.dumps(example)}' "
    f"{server.url}/v1/models/{name}:predict\n"
    f"  page:     {server.url}/  (Ctrl-C stops; SIGHUP reloads the index)",
    flush=True,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  options = _options()
  try:
    loopback = ipaddress.ip_address(options.host).is_loopback
  except ValueError:
    loopback = options.host == "localhost"
  if not loopback:
    logging.warning(
      "Binding %s: the service has no authentication; anyone who can reach "
      "this address can query it.",
      options.host,
    )
  try:
    common.run_or_fail(
      service.server.serve_forever, _WORKDIR.value, options, _announce
    )
  except OSError as e:  # e.g. the port is taken.
    common.fail(
      f"cannot serve on {options.host}:{options.port}: {e.strerror or e}"
    )
  sys.exit(0)


if __name__ == "__main__":
  app.run(main)
