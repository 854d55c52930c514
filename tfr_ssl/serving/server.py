"""The aiohttp application: routes, errors, lifecycle, background runner.

Routes (NAME is `Options.model_name`; V is `/versions/N` or `/labels/L`):
  GET  /v1/models/NAME[V]             status (TF Serving's keys)
  GET  /v1/models/NAME[V]/metadata    signatures (TF Serving's keys)
  POST /v1/models/NAME[V]:predict     top-k ids and scores
  GET  /                              the page for people
  GET  /ui/model                      the page's form and the serving facts
  GET  /ui/samples, /ui/history?query_id=ID, /ui/items?ids=A,B
                                      the page's data

Every error is JSON, `{"error": "field: what is wrong"}`, with a 4xx status
for the client's mistakes (400 for a malformed request, also one the HTTP
parser refuses, e.g. a request line or header over 8 KB; 404 for unknown
models, versions and paths; 405 for a wrong method; 408 for a body that does
not arrive in time; 413 for a body over `max_body_bytes`) and 503 when
overloaded or stopping. An unexpected exception is logged with its
trace and answered with a 500 that says only that: no trace reaches a
client. The Server header names the service, not the library or versions.

Timeouts bound what a client can hold: a connection with no request in
progress closes after `idle_timeout_seconds`; once a request's first byte
arrives its head must be complete within `header_timeout_seconds` (else the
connection closes); a predict body must arrive in full within
`body_timeout_seconds` (else 408 and the connection closes).

The server loads its first version before it binds its port, so an open
port means it can answer. A poll every `poll_seconds` (and SIGHUP in
`serve_forever`) looks for a newer index and swaps it in (see `versions`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import threading
from collections.abc import Callable

from aiohttp import http_exceptions, web, web_protocol

from tfr_ssl.serving import batching, page, protocol, samples, versions
from tfr_ssl.serving.protocol import RequestError

log = logging.getLogger(__name__)

UI_HISTORY_SHOWN = 20
SERVER_HEADER = "tfr_ssl"


@dataclasses.dataclass
class Options:
  """How the service runs.

  Attributes:
    host: Address to bind (loopback by default: put a proxy in front for
      other machines).
    port: TCP port; 0 lets the OS choose (see `Server.url`).
    model_name: The NAME in /v1/models/NAME.
    index_dir: The index directory (default WORKDIR/index); either an index
      or TF Serving's numbered version directories.
    poll_seconds: How often to look for a newer index (0: never).
    max_batch_size: Queries per model call.
    batch_wait_ms: How long a batch of more than one request waits for
      more (0: never; a lone request never waits; see `batching`).
    max_queue: Queries waiting at most before requests get 503.
    max_body_bytes: Request body limit (413 beyond it).
    max_instances: Queries per request.
    max_exclude: Excluded item ids per query.
    samples: Load sample queries and histories for the page.
    access_log: Log every request.
    idle_timeout_seconds: Close a connection with no request in progress
      after this long.
    header_timeout_seconds: A request's head (line and headers) must arrive
      within this long of its first byte (0: no limit beyond the idle one).
    body_timeout_seconds: A predict body must arrive within this long of
      its head (408 otherwise).
  """

  host: str = "127.0.0.1"
  port: int = 8501
  model_name: str = "retrieval"
  index_dir: str | None = None
  poll_seconds: float = 2.0
  max_batch_size: int = 64
  batch_wait_ms: float = 0.0
  max_queue: int = 4096
  max_body_bytes: int = 1 << 20
  max_instances: int = 256
  max_exclude: int = 1000
  samples: bool = True
  access_log: bool = False
  idle_timeout_seconds: float = 75.0
  header_timeout_seconds: float = 10.0
  body_timeout_seconds: float = 30.0


def _error(status: int, message: str) -> web.Response:
  response = web.json_response({"error": message}, status=status)
  if status == 408:
    response.force_close()  # The rest of the body may never come.
  return response


@web.middleware
async def _errors(request: web.Request, handler):
  try:
    return await handler(request)
  except RequestError as e:
    return _error(e.status, e.message)
  except web.HTTPException as e:
    if e.status < 400:
      raise
    if e.status == 404:
      message = f"{request.path}: no such resource"
    elif e.status == 405:
      allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
      message = f"{request.method} {request.path}: method not allowed" + (
        f" (allowed: {allowed})" if allowed else ""
      )
    else:
      message = e.reason
    return _error(e.status, message)
  except asyncio.CancelledError:
    raise
  except ConnectionError as e:
    # The client went away (e.g. mid-body): nobody to answer, nothing wrong
    # with the server. The reply cannot be written; aiohttp drops it.
    log.info(
      "%s %s from %s: the client closed the connection (%s).",
      request.method,
      request.path,
      request.remote,
      e or type(e).__name__,
    )
    return _error(400, "the connection was closed")
  except Exception:
    log.exception(
      "Unexpected error answering %s %s", request.method, request.path
    )
    return _error(500, "internal error; the server log has the details")


async def _server_header(request, response) -> None:
  response.headers["Server"] = SERVER_HEADER


def _parser_error(exc: BaseException | None, message: str | None):
  """(status, message) for a request aiohttp's HTTP parser refused."""
  text = " ".join((message or str(exc or "")).split())
  if isinstance(exc, http_exceptions.LineTooLong):
    # The request line or a header over aiohttp's limit; its message
    # quotes the start of the line, which is not worth echoing.
    limit = re.search(r"more than (\d+) bytes", text)
    bound = f" ({limit.group(1)} bytes)" if limit else ""
    return 400, f"request: the request line or a header is too long{bound}"
  if isinstance(exc, http_exceptions.BadHttpMethod):
    return 400, f"method: not a valid HTTP method ({text[:100]})"
  return 400, f"request: not valid HTTP ({text[:200] or 'malformed'})"


class _Connection(web_protocol.RequestHandler):
  """aiohttp's connection handler with a header deadline and JSON errors.

  aiohttp answers requests its parser refuses (a bad method, a request line
  or header over 8 KB) itself, in plain text with its own Server header;
  `handle_error` answers them as every other error. aiohttp bounds an idle
  connection (`keepalive_timeout`, which also runs while a request head is
  incomplete) but not the time a head may take once it has started; the
  header deadline does. It reads aiohttp's connection state (`_waiter` is
  pending while no complete request is queued), so it is tied to the
  aiohttp release `setup.py` pins.

  Args:
    manager: The aiohttp server the connection belongs to.
    header_timeout: Seconds a request head may take (0: unbounded).
    **kwargs: aiohttp's RequestHandler arguments.
  """

  def __init__(self, manager, *, header_timeout: float, **kwargs):
    super().__init__(manager, **kwargs)
    self._header_timeout = header_timeout
    self._head_waiter = None

  def data_received(self, data: bytes) -> None:
    super().data_received(data)
    waiter = self._waiter
    if self._header_timeout <= 0 or waiter is None or waiter.done():
      return  # A complete request is queued or being answered.
    if self._head_waiter is not waiter:  # The first bytes of a new head.
      self._head_waiter = waiter
      self._loop.call_later(self._header_timeout, self._head_expired, waiter)

  def _head_expired(self, waiter) -> None:
    if waiter is self._waiter and not waiter.done():
      log.info(
        "Closed a connection whose request head took over %g s.",
        self._header_timeout,
      )
      self.force_close()

  def handle_error(
    self,
    request,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
  ) -> web.StreamResponse:
    if status >= 500:  # An exception (500) or a timeout (504) in a handler.
      log.error(
        "Unexpected error answering a request from %s",
        request.remote,
        exc_info=exc,
      )
      text = "internal error; the server log has the details"
    else:
      status, text = _parser_error(exc, message)
      log.info("Refused a request from %s: %s", request.remote, text)
    response = web.json_response({"error": text}, status=status)
    response.headers["Server"] = SERVER_HEADER
    response.force_close()
    return response


class _WebServer(web.Server):
  """aiohttp's server, making `_Connection`s."""

  def __init__(self, *args, header_timeout: float, **kwargs):
    super().__init__(*args, **kwargs)
    self._header_timeout = header_timeout

  def __call__(self) -> _Connection:
    return _Connection(
      self,
      loop=self._loop,
      header_timeout=self._header_timeout,
      **self._kwargs,
    )


class _Runner(web.AppRunner):
  """An AppRunner whose server makes `_Connection`s."""

  def __init__(self, app: web.Application, *, header_timeout: float, **kw):
    super().__init__(app, **kw)
    self._header_timeout = header_timeout

  async def _make_server(self) -> web.Server:
    server = await super()._make_server()  # Starts and freezes the app.
    return _WebServer(
      server.request_handler,
      request_factory=server.request_factory,
      handler_cancellation=server.handler_cancellation,
      header_timeout=self._header_timeout,
      **server._kwargs,
    )


def _csp(html: str) -> str:
  """A Content-Security-Policy allowing only the page's own inline code.

  The page's one script and one style block are allowed by their SHA-256
  hashes; nothing else may run or load except requests to this origin.
  """

  def hashes(tag: str) -> str:
    found = []
    rest = html
    while f"<{tag}>" in rest:
      body = rest.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
      digest = hashlib.sha256(body.encode()).digest()
      found.append(f"'sha256-{base64.b64encode(digest).decode()}'")
      rest = rest.split(f"</{tag}>", 1)[1]
    return " ".join(found)

  return (
    f"default-src 'none'; script-src {hashes('script')}; "
    f"style-src {hashes('style')}; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
  )


class Server:
  """The retrieval service of one run.

  Args:
    workdir: The run (its export/ and, by default, index/).
    options: How to serve.

  Example:
    >>> server = Server("runs/cfm", Options(port=0))
    >>> server.load()          # the first version, before binding
    >>> url = await server.start()
    >>> ...
    >>> await server.stop()
  """

  def __init__(self, workdir: str, options: Options | None = None):
    self.workdir = workdir
    self.options = options or Options()
    index_dir = self.options.index_dir or os.path.join(workdir, "index")
    self.versions = versions.VersionManager(
      index_dir, os.path.join(workdir, "export")
    )
    self.samples: samples.Samples | None = None
    self.limits = protocol.Limits(
      max_instances=self.options.max_instances,
      max_exclude=self.options.max_exclude,
    )
    self.batcher: batching.MicroBatcher | None = None
    self._predicting = 0  # Predict requests received and not answered.
    self.url: str | None = None
    self._runner: web.AppRunner | None = None
    self._poller: asyncio.Task | None = None
    self._refresher = concurrent.futures.ThreadPoolExecutor(
      max_workers=1, thread_name_prefix="refresh"
    )

  def load(self) -> versions.Version:
    """Loads the first version (and the page's samples); blocking.

    Raises:
      versions.NoIndexError, serving.IndexMismatchError, or what loading
      raised: the service cannot start.
    """
    version = self.versions.load_initial()
    if self.options.samples:
      self.samples = samples.load_samples(self.workdir)
    return version

  def app(self) -> web.Application:
    """The aiohttp application (routes and middleware)."""
    app = web.Application(
      middlewares=[_errors], client_max_size=self.options.max_body_bytes
    )
    app.on_response_prepare.append(_server_header)
    model = r"{name:[^/:]+}"
    version = r"/versions/{version:[^/:]+}"
    label = r"/labels/{label:[^/:]+}"
    for prefix in (
      f"/v1/models/{model}",
      f"/v1/models/{model}{version}",
      f"/v1/models/{model}{label}",
    ):
      app.router.add_get(prefix, self._status)
      app.router.add_get(prefix + "/metadata", self._metadata)
      app.router.add_post(prefix + r":{method:[A-Za-z]+}", self._method)
    app.router.add_get("/", self._page)
    app.router.add_get("/ui/model", self._model)
    app.router.add_get("/ui/samples", self._samples)
    app.router.add_get("/ui/history", self._history)
    app.router.add_get("/ui/items", self._items)
    return app

  async def start(self) -> str:
    """Binds and serves (after `load`); returns the base URL."""
    if self.versions.current is None:
      self.load()
    options = self.options
    self.batcher = batching.MicroBatcher(
      lambda: self.versions.current,
      max_batch_size=options.max_batch_size,
      max_wait=options.batch_wait_ms / 1000.0,
      max_queue=options.max_queue,
      in_flight=lambda: self._predicting,
    )
    self.batcher.start()
    self._runner = _Runner(
      self.app(),
      access_log=logging.getLogger("aiohttp.access")
      if options.access_log
      else None,
      handle_signals=False,
      shutdown_timeout=10.0,
      keepalive_timeout=options.idle_timeout_seconds,
      header_timeout=options.header_timeout_seconds,
    )
    await self._runner.setup()
    site = web.TCPSite(self._runner, options.host, options.port)
    await site.start()
    host, port = self._runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    self.url = f"http://{host}:{port}"
    if options.poll_seconds > 0:
      self._poller = asyncio.get_running_loop().create_task(self._poll())
    return self.url

  async def stop(self) -> None:
    """Stops accepting, lets in-flight requests finish, stops batching."""
    if self._poller is not None:
      self._poller.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await self._poller
      self._poller = None
    if self._runner is not None:
      await self._runner.cleanup()
      self._runner = None
    if self.batcher is not None:
      await self.batcher.stop()
      self.batcher = None
    self._refresher.shutdown(wait=False, cancel_futures=True)

  async def refresh(self) -> str:
    """Looks for a newer index now; see `VersionManager.refresh`."""
    loop = asyncio.get_running_loop()
    try:
      return await loop.run_in_executor(self._refresher, self.versions.refresh)
    except RuntimeError:  # The executor is shut down: we are stopping.
      return "unchanged"

  async def _poll(self) -> None:
    while True:
      await asyncio.sleep(self.options.poll_seconds)
      try:
        await self.refresh()
      except asyncio.CancelledError:
        raise
      except Exception:
        log.exception("Looking for a new index version failed.")

  # Handlers.

  def _check_model(self, request: web.Request) -> versions.Version:
    """The serving version, if the path names this model (and version)."""
    name = request.match_info["name"]
    if name != self.options.model_name:
      raise RequestError(
        f"model {name!r} not found; this server serves "
        f"{self.options.model_name!r}",
        status=404,
      )
    current = self.versions.current
    label = request.match_info.get("label")
    if label is not None:
      # TF Serving's answer for a label its model config does not define;
      # this service defines none.
      raise RequestError(f"Unrecognized servable version label: {label}")
    wanted = request.match_info.get("version")
    if wanted is not None and wanted != str(current.number):
      raise RequestError(
        f"version {wanted!r} of {name!r} is not available; serving version "
        f"{current.number}",
        status=404,
      )
    return current

  async def _status(self, request: web.Request) -> web.Response:
    self._check_model(request)
    number = request.match_info.get("version")
    return web.json_response(
      self.versions.status(int(number) if number else None)
    )

  async def _metadata(self, request: web.Request) -> web.Response:
    current = self._check_model(request)
    return web.json_response(
      {
        "model_spec": {
          "name": self.options.model_name,
          "signature_name": "",
          "version": str(current.number),
        },
        "metadata": {
          "signature_def": {"signature_def": current.signature_defs}
        },
      }
    )

  async def _model(self, request: web.Request) -> web.Response:
    """What TF Serving's replies have no keys for: the form, the facts."""
    current = self.versions.current
    return web.json_response(
      {
        "model_name": self.options.model_name,
        # The history input is a list of item ids, not a feature value.
        "query_features": [
          {
            "name": f.name,
            "kind": "history" if f.name == protocol.HISTORY else f.kind,
          }
          for f in current.features
        ],
        "multi_separator": "|",
        "top_k": {"default": current.k, "max": current.k},
        "max_exclude": self.options.max_exclude,
        "max_instances": self.options.max_instances,
        "serving": current.summary(),
        "refused": self.versions.refused(),
        "batching": self.batcher.stats.as_dict() if self.batcher else {},
      }
    )

  async def _method(self, request: web.Request) -> web.Response:
    self._check_model(request)
    method = request.match_info["method"]
    if method != "predict":
      raise RequestError(
        f":{method}: not supported; a retrieval model answers :predict",
        status=404,
      )
    self._predicting += 1
    try:
      return await self._predict(request)
    finally:
      self._predicting -= 1

  async def _predict(self, request: web.Request) -> web.Response:
    timeout = self.options.body_timeout_seconds
    try:
      async with asyncio.timeout(timeout if timeout > 0 else None):
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
      raise RequestError(
        f"body: larger than {self.options.max_body_bytes} bytes",
        status=413,
      ) from None
    except TimeoutError:
      raise RequestError(
        f"body: not received in full within {timeout:g} s", status=408
      ) from None
    current = self.versions.current
    predict = protocol.parse_predict(
      protocol.parse_json(body), current.features, current.k, self.limits
    )
    version, results = await self.batcher.submit(predict.queries)
    return web.json_response(
      protocol.predict_response(predict, results, version.items),
      headers={"X-Model-Version": str(version.number)},
    )

  async def _page(self, request: web.Request) -> web.Response:
    text = page.render(self.options.model_name)
    return web.Response(
      text=text,
      content_type="text/html",
      headers={
        "Content-Security-Policy": _csp(text),
        "X-Content-Type-Options": "nosniff",
      },
    )

  async def _samples(self, request: web.Request) -> web.Response:
    if self.samples is None:
      return web.json_response({"query_id": None, "samples": []})
    return web.json_response(
      {"query_id": self.samples.query_id, "samples": self.samples.samples}
    )

  async def _history(self, request: web.Request) -> web.Response:
    query_id = request.query.get("query_id", "")
    if not query_id:
      raise RequestError("query_id: missing; /ui/history?query_id=ID")
    if self.samples is None:
      raise RequestError(
        "query_id: no histories (the run's dataset is not available)",
        status=404,
      )
    found = self.samples.history(query_id, self.options.max_exclude)
    if found is None:
      raise RequestError(f"query_id: unknown user {query_id!r}", status=404)
    items = self.versions.current.items
    return web.json_response(
      {
        "query_id": query_id,
        "total": found["total"],
        "items": [
          {"id": i, "features": items.get(i, {})}
          for i in found["ids"][:UI_HISTORY_SHOWN]
        ],
        "exclude": found["ids"],
      }
    )

  async def _items(self, request: web.Request) -> web.Response:
    """The features of item ids (comma-separated), for a typed history."""
    ids = [i for i in request.query.get("ids", "").split(",") if i]
    if len(ids) > self.options.max_exclude:
      raise RequestError(
        f"ids: at most {self.options.max_exclude} item ids, got {len(ids)}"
      )
    items = self.versions.current.items
    return web.json_response(
      {
        "items": [
          {"id": i, "known": i in items, "features": items.get(i, {})}
          for i in ids
        ]
      }
    )


def serve_forever(
  workdir: str, options: Options, announce: Callable[[Server], None]
) -> None:
  """Loads, serves until SIGINT or SIGTERM, then stops gracefully.

  SIGHUP looks for a newer index at once.

  Args:
    workdir: The run.
    options: How to serve.
    announce: Called with the server once it answers (e.g. prints its URL).
  """
  server = Server(workdir, options)
  server.load()

  async def main():
    await server.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
      loop.add_signal_handler(sig, done.set)
    loop.add_signal_handler(
      signal.SIGHUP, lambda: loop.create_task(server.refresh())
    )
    announce(server)
    await done.wait()
    log.info("Stopping: finishing in-flight requests.")
    await server.stop()

  asyncio.run(main())


async def _cancel_remaining_tasks() -> None:
  """Cancels and awaits the loop's other tasks, as `asyncio.run` does.

  A connection still open at stop (e.g. one reading the rest of a body it
  refused) has a task that must end before its loop stops.
  """
  tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
  for task in tasks:
    task.cancel()
  await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundServer:
  """A Server on its own event loop thread (tests, benchmarks, notebooks).

  Example:
    >>> with BackgroundServer("runs/cfm", Options(port=0)) as server:
    ...   requests.get(server.url + "/v1/models/retrieval")
  """

  def __init__(self, workdir: str, options: Options | None = None):
    self.server = Server(workdir, options)
    self._loop: asyncio.AbstractEventLoop | None = None
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    return self.server.url

  @property
  def versions(self) -> versions.VersionManager:
    return self.server.versions

  def start(self, timeout: float = 60.0) -> BackgroundServer:
    self.server.load()
    self._loop = asyncio.new_event_loop()
    started = concurrent.futures.Future()

    def run():
      asyncio.set_event_loop(self._loop)
      try:
        self._loop.run_until_complete(self.server.start())
      except BaseException as e:
        started.set_exception(e)
        return
      started.set_result(None)
      self._loop.run_forever()

    self._thread = threading.Thread(target=run, name="server", daemon=True)
    self._thread.start()
    started.result(timeout)
    return self

  def call(self, coroutine, timeout: float = 60.0):
    """Runs a coroutine on the server's loop; returns its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(
      timeout
    )

  def refresh(self, timeout: float = 120.0) -> str:
    """Looks for a newer index now (as the poll does)."""
    return self.call(self.server.refresh(), timeout)

  def stop(self, timeout: float = 30.0) -> None:
    if self._loop is None:
      return
    try:
      if self._thread.is_alive():
        self.call(self.server.stop(), timeout)
        self.call(_cancel_remaining_tasks(), timeout)
    finally:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout)
      if not self._thread.is_alive():
        self._loop.close()
      self._loop = None

  def __enter__(self) -> BackgroundServer:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
