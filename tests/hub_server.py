"""A Hugging Face Hub-protocol server on loopback, for tests (stdlib only).

Routes are added by the Hub-harness work (issue 2); this skeleton binds a free port and serves 404s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_error(404)

    def log_message(self, format, *args):  # noqa: A002
        pass


@dataclass
class HubServer:
    endpoint: str
    token: str
    httpd: ThreadingHTTPServer


def start_hub_server() -> HubServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return HubServer(endpoint=f"http://127.0.0.1:{httpd.server_port}", token="hf_dexml_test_token", httpd=httpd)
