"""A fake Cloud Storage for tests: the JSON API's media downloads of a `gs://` bucket.

ArrayRecord reads `gs://` shards with the Cloud Storage C++ client, which talks HTTP to
`CLOUD_STORAGE_EMULATOR_ENDPOINT` when it is set. This server answers those downloads
(`GET /storage/v1/b/BUCKET/o/OBJECT?alt=media`, with byte ranges) from whatever filesystem
`etils.epath` uses for `gs://` in the test (an fsspec in-memory one), so Python (epath, tfds
metadata) and C++ (the shards) see one bucket. A missing object is a 404, as on GCS.
"""

import os
import re
import threading
import urllib.parse
from http import server

from etils import epath

_OBJECT = re.compile(r"/b/([^/]+)/o/([^?]+)")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_span(header: str | None, total: int) -> tuple[int, int] | None:
  """The inclusive [start, end] an HTTP Range header asks for (None: the whole object)."""
  match = _RANGE.fullmatch(header or "")
  if not match:
    return None
  first, last = match.groups()
  if not first:  # "bytes=-N": the last N bytes
    return max(0, total - int(last)), total - 1
  return int(first), min(total - 1, int(last)) if last else total - 1


class _MediaHandler(server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def do_GET(self) -> None:  # noqa: N802  (the http.server hook's name)
    match = _OBJECT.search(urllib.parse.urlparse(self.path).path)
    path = match and epath.Path(f"gs://{match[1]}/{urllib.parse.unquote(match[2])}")
    if not path or not path.exists():
      self.send_response(404)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    payload = path.read_bytes()
    span = byte_span(self.headers.get("Range"), len(payload))
    start, end = span or (0, len(payload) - 1)
    self.send_response(206 if span else 200)
    self.send_header("Content-Type", "application/octet-stream")
    self.send_header("Content-Range", f"bytes {start}-{end}/{len(payload)}")
    self.send_header("Content-Length", str(end + 1 - start))
    self.end_headers()
    self.wfile.write(payload[start:end + 1])

  def log_message(self, *args) -> None:
    del args


def serve() -> server.ThreadingHTTPServer:
  """Starts the server on a free local port and points the C++ client at it."""
  httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), _MediaHandler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = f"http://127.0.0.1:{httpd.server_address[1]}"
  return httpd
