"""A real HTTP receiver for webhook tests: http.server in a thread on a free 127.0.0.1 port.

It records every request (headers and body) and answers from a script: a list of
(status, headers, body) used one per request, then `default`. `down()` closes the listening
socket (connections are refused), `up()` listens again on the same port.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import standardwebhooks


@dataclass
class Request:
    headers: dict
    body: bytes
    at: float
    status: int = 0

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict]:
        return self.payload["data"]["events"]

    def verifies_with(self, secret: str) -> bool:
        try:
            standardwebhooks.Webhook(secret).verify(self.body, self.headers)
            return True
        except standardwebhooks.webhooks.WebhookVerificationError:
            return False


@dataclass
class Receiver:
    port: int = 0
    script: list[tuple[int, dict, bytes]] = field(default_factory=list)
    default: tuple[int, dict, bytes] = (200, {}, b"ok")
    delay_s: float = 0.0  # before answering (to be killed mid-request)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    status, headers, reply = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.requests.append(Request({k.lower(): v for k, v in self.headers.items()}, body,
                                                     time.monotonic(), status))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (the chaos test) is expected, not a failure

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def all_events(self, only_2xx: bool = False) -> list[dict]:
        """Events of every request received (only those answered 2xx with only_2xx), in arrival order."""
        with self.lock:
            return [e for r in self.requests if not only_2xx or 200 <= r.status < 300 for e in r.events]

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
