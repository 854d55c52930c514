"""What serves: exported towers, the retrieval model, and the HTTP service.

  export      the query and item towers as SavedModels over raw strings
  retrieval   the retrieval SavedModel: query tower + index, manifest checks
  new_items   items added to the corpus through the exported item tower

The HTTP service (`pipelines.serve`) speaks TensorFlow Serving's REST API
(`GET /v1/models/NAME`, `GET /v1/models/NAME/metadata`,
`POST /v1/models/NAME:predict`), so a client written for TF Serving can call
it, and adds what a retrieval index needs around the SavedModel: item ids to
leave out and a bounded `top_k` per query, micro-batching of concurrent
requests into one model call, refresh of the index without downtime, and a
small page for people at `/`.

Web stack: aiohttp. Micro-batching is an asyncio queue in front of one model
thread, which an asyncio server expresses directly: requests wait on futures
while the batcher collects them, with no thread per connection. aiohttp is a
maintained asyncio HTTP server and client (its client drives the tests),
parses HTTP itself (no hand-rolled parsing here) and bounds
request bodies.

  versions    finding, loading, checking and swapping index versions
  batching    the micro-batcher (one model call per batch)
  protocol    TF Serving request parsing with errors naming the field
  samples     sample queries and users' histories for the page (optional)
  page        the page's HTML
  server      the aiohttp application, its lifecycle, and a background runner
"""

from tfr_ssl.serving.protocol import RequestError
from tfr_ssl.serving.server import BackgroundServer, Options, Server
from tfr_ssl.serving.versions import VersionManager

__all__ = [
  "BackgroundServer",
  "Options",
  "RequestError",
  "Server",
  "VersionManager",
]
