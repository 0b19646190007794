"""localstripe (PyPI 1.15.10) as a test double of the Stripe API, started by the test harness.

`python -m tests.localstripe_server --port N --state FILE` runs localstripe's own aiohttp app
with three changes to the test double, none to pyglue:

1. **Subscription metadata updates persist.** localstripe's `Subscription._update` takes a
   `metadata` argument and drops it, so `POST /v1/subscriptions/{id}` with metadata answers
   200 and changes nothing (upstream bug: every other resource merges metadata in
   `StripeObject._update`). Here it is merged the way Stripe documents: the keys given are
   set, a key given as "" is removed, keys not given are kept. Without this the acceptance
   "regen writes the new version into the Stripe metadata" could not be checked at all.
2. **State lives in FILE**, not in the /tmp/localstripe.pickle every localstripe on the
   machine shares (upstream writes it after every POST/DELETE and reads it at start). A
   server stopped and started again on the same FILE (the outage test) has the same objects;
   another test run or engineer's localstripe never sees them.
3. **It listens on 127.0.0.1 only** (upstream binds every interface).

`LocalStripe` starts one as a subprocess on a free loopback port, and can stop and restart
it on the same port and state.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

API_KEY = "sk_test_pyglue_localstripe_0123456789"  # localstripe accepts any sk_test_ key


def _patch_localstripe(state: Path) -> None:
    from localstripe import resources

    def try_load_from_disk(self) -> None:
        try:
            with open(state, "rb") as f:
                old = pickle.load(f)
        except FileNotFoundError:
            return
        self.clear()
        dict.update(self, old)

    def dump_to_disk(self) -> None:
        tmp = state.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, state)

    resources.Store.try_load_from_disk = try_load_from_disk
    resources.Store.dump_to_disk = dump_to_disk

    original_update = resources.Subscription._update

    def update_with_metadata(self, metadata=None, **data):
        if metadata is not None and not isinstance(metadata, dict):
            raise resources.UserError(400, "Bad request")
        original_update(self, **data)
        if metadata:
            merged = dict(self.metadata or {})
            for key, value in metadata.items():
                if value in ("", None):
                    merged.pop(key, None)
                else:
                    merged[key] = value
            self.metadata = merged

    resources.Subscription._update = update_with_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    _patch_localstripe(args.state)

    from aiohttp import web
    from localstripe import server

    server.store.try_load_from_disk()
    web.run_app(server.app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                handle_signals=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStripe:
    """One localstripe subprocess on a loopback port, with its state in a file of its own."""

    def __init__(self, state_dir: Path):
        self.port = free_port()
        self.state = state_dir / "localstripe.pickle"
        self.log = state_dir / "localstripe.log"
        self.process: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        assert self.process is None, "already running"
        root = Path(__file__).resolve().parent.parent
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.localstripe_server", "--port", str(self.port),
                 "--state", str(self.state)],
                cwd=root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {self.process.returncode}; see {self.log}")
            if self.responds():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"localstripe did not answer on port {self.port} in {timeout:g}s; see {self.log}")

    def responds(self) -> bool:
        request = urllib.request.Request(f"{self.api_base}/v1/customers?limit=1",
                                         headers={"Authorization": f"Bearer {API_KEY}"})
        try:
            with urllib.request.urlopen(request, timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


if __name__ == "__main__":
    main()
