r"""Serves a run's retrieval index over HTTP (TF Serving's REST API).

Loads WORKDIR/index (checked against WORKDIR/export), binds --host:--port
(loopback by default) and answers until SIGINT or SIGTERM, finishing the
requests in flight. Idle connections, slow request heads and slow bodies are
cut off (--idle_timeout_seconds, --header_timeout_seconds,
--body_timeout_seconds). A newer index (a rebuilt WORKDIR/index, or a higher
numbered directory in TF Serving's layout under --index_dir) is picked up
every --poll_seconds, or at once on SIGHUP, without dropping a request; one
that fails to load or was built for another export is refused and the old
one keeps serving. Deleting the serving numbered directory falls back to the
highest one left. A page for people is at /. See tfr_ssl/serving/ and the
README's "Serving" section.

When the run's query tower reads a history, a query may carry `history`
(item ids, oldest first): a user the data does not hold is answered from it
without retraining (docs/serving.md, "A user's history").

Example:
  python -m pipelines.serve --workdir=runs/cfm --port=8501
  curl -d '{"instances": [{"user_id": "u1"}], "top_k": 5}' \
      http://127.0.0.1:8501/v1/models/retrieval:predict
  curl -d '{"instances": [{"history": ["1193", "661"]}], "top_k": 5}' \
      http://127.0.0.1:8501/v1/models/retrieval:predict
"""

import ipaddress
import json
import logging
import sys

from absl import app, flags

from pipelines import common
from tfr_ssl import serving as service

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")

# One flag per field of service.Options, named as the field, with the
# field's default and type.
_HELP = {
  "host": (
    "Address to bind; loopback by default (put a proxy in front to serve "
    "other machines)."
  ),
  "port": "TCP port (0: any free port, printed at start).",
  "model_name": "NAME in /v1/models/NAME.",
  "index_dir": (
    "Index directory (default WORKDIR/index): an index, or numbered version "
    "directories (TF Serving's layout; the highest is served)."
  ),
  "poll_seconds": "How often to look for a newer index (0: only on SIGHUP).",
  "max_batch_size": "Queries per model call.",
  "batch_wait_ms": (
    "How long a batch of more than one request waits for more (ms; 0: "
    "never). A request that finds the model idle never waits."
  ),
  "max_queue": "Queries waiting at most; beyond it requests get 503.",
  "max_body_bytes": "Request body limit (413).",
  "max_instances": "Queries per request.",
  "max_exclude": "Excluded item ids per query.",
  "samples": (
    "Offer sample queries and users' histories on the page (read from the "
    "run's cached dataset, if it is there)."
  ),
  "access_log": "Log every request.",
  "idle_timeout_seconds": (
    "Close a connection with no request in progress after this long."
  ),
  "header_timeout_seconds": (
    "A request's line and headers must arrive within this long of its first "
    "byte, else the connection is closed (0: only the idle timeout bounds "
    "it)."
  ),
  "body_timeout_seconds": (
    "A predict body must arrive within this long of its headers, else 408 "
    "(0: no limit)."
  ),
}
# (lower, upper) of the numeric flags, checked by absl while parsing: a
# duration may be 0 (never / no wait), a size or count must be >= 1.
_BOUNDS = {
  "port": (0, 65535),
  "poll_seconds": (0, None),
  "batch_wait_ms": (0, None),
  "max_batch_size": (1, None),
  "max_queue": (1, None),
  "max_body_bytes": (1, None),
  "max_instances": (1, None),
  "max_exclude": (1, None),
  "idle_timeout_seconds": (0.001, None),
  "header_timeout_seconds": (0, None),
  "body_timeout_seconds": (0, None),
}


def _define_option_flags() -> None:
  """Defines one flag per entry of `_HELP`, typed by the field's default."""
  defaults = service.Options()
  for name, help_text in _HELP.items():
    default = getattr(defaults, name)
    low, high = _BOUNDS.get(name, (None, None))
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(
        name, default, help_text, lower_bound=low, upper_bound=high
      )
    elif isinstance(default, float):
      parser = common.FiniteFloatParser(low, high)
      serializer = flags.ArgumentSerializer()
      flags.DEFINE(parser, name, default, help_text, serializer=serializer)
    else:  # str, or None for "derived from the workdir".
      flags.DEFINE_string(name, default, help_text)


_define_option_flags()


def _options() -> service.Options:
  return service.Options(**{name: flags.FLAGS[name].value for name in _HELP})


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
  common.run(main)
