"""evoens.datasets.download against a local HTTP server on 127.0.0.1 serving copies of real MNIST.

The server (http.server in a thread, port 0) serves a directory at ``/good/`` and misbehaves on
purpose elsewhere: ``/garbage/`` answers random bytes, ``/stall/`` accepts and never answers,
``/truncated/`` promises the full length and sends half, anything else is a 404. Only loopback
addresses are used and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens.datasets import DataError, download, load_mnist
from evoens.datasets.mnist import MNIST

REPO = Path(__file__).resolve().parents[1]
STALL_LIMIT_S = 10.0  # a stalled handler gives up after this long even if the test forgets it
NAME = "t10k-labels-idx1-ubyte.gz"


def mnist_dir() -> Path:
    """The real MNIST files: $EVOENS_MNIST_DIR, else ../shared/data/mnist beside the repository."""
    path = Path(os.environ.get("EVOENS_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist")
    if not all((path / f.name).is_file() for f in _mnist_files()):
        pytest.skip(f"real MNIST files not found in {path} (set EVOENS_MNIST_DIR or clone shared/ beside the repo)")
    return path


def _mnist_files() -> tuple[Any, ...]:
    return (MNIST.train_images, MNIST.train_labels, MNIST.test_images, MNIST.test_labels)


@dataclass
class Server:
    base: str
    root: Path
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, mode: str, name: str = NAME) -> str:
        return f"{self.base}/{mode}/{name}"


class Handler(SimpleHTTPRequestHandler):
    server_state: Server

    def do_GET(self) -> None:
        state = self.server_state
        state.requests.append(self.path)
        mode, _, rest = self.path.lstrip("/").partition("/")
        if mode == "stall":
            state.release.wait(STALL_LIMIT_S)
            return
        body = (state.root / rest).read_bytes() if (state.root / rest).is_file() else None
        if mode == "garbage" and body is not None:
            self._send(os.urandom(len(body)), len(body))
        elif mode == "truncated" and body is not None:
            self._send(body[: len(body) // 2], len(body))
        elif mode == "good" and body is not None:
            self._send(body, len(body))
        else:
            self.send_error(404)

    def _send(self, body: bytes, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are expected here


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    for f in _mnist_files():
        shutil.copyfile(mnist_dir() / f.name, root / f.name)
    state = Server("", root)
    handler = type("BoundHandler", (Handler,), {"server_state": state})
    httpd = QuietServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def closed_port_url() -> str:
    with socket.socket() as s:  # bind, learn the port, close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NAME}"


def test_download_verifies_and_writes_atomically(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / NAME
    expected = sha256(server.root / NAME)
    assert download([server.url("good")], dest, sha256=expected) == dest
    assert dest.read_bytes() == (server.root / NAME).read_bytes()
    assert leftovers(dest.parent) == [NAME]  # no temp file left beside it
    assert download(server.url("good"), tmp_path / "unchecked", sha256=None).is_file()


def test_bad_checksum_moves_on_to_the_next_mirror(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    urls = [server.url("missing"), server.url("garbage"), server.url("good")]
    download(urls, dest, sha256=sha256(server.root / NAME))
    assert sha256(dest) == sha256(server.root / NAME)
    assert server.requests == [f"/missing/{NAME}", f"/garbage/{NAME}", f"/good/{NAME}"]
    assert leftovers(tmp_path) == sorted([NAME, "served"])


def test_a_stalling_mirror_times_out_quickly(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    start = time.monotonic()
    download([server.url("stall"), server.url("good")], dest, sha256=sha256(server.root / NAME), timeout=0.5)
    assert time.monotonic() - start < 5.0 and dest.is_file()


def test_all_mirrors_failing_is_one_line_naming_each(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data" / NAME
    dest.parent.mkdir()
    dest.write_bytes(b"an older copy")  # a failed download must not touch what is there
    urls = [server.url(mode) for mode in ("missing", "garbage", "stall", "truncated")] + [closed_port_url()]
    start = time.monotonic()
    with pytest.raises(DataError) as exc:
        download(urls, dest, sha256=sha256(server.root / NAME), timeout=0.5)
    assert time.monotonic() - start < 10.0
    message = str(exc.value)
    assert "\n" not in message and NAME in message and all(url in message for url in urls)
    for what in ("HTTP 404", "sha256 mismatch", "timed out after 0.5 s", "Connection"):
        assert what in message, message
    assert dest.read_bytes() == b"an older copy" and leftovers(dest.parent) == [NAME]


def test_an_unwritable_destination_is_a_data_error(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DataError) as exc:
        download([server.url("good")], blocker / NAME, sha256=None)  # its "directory" is a file
    assert "\n" not in str(exc.value) and str(blocker / NAME) in str(exc.value)


def test_a_truncated_transfer_is_caught_without_a_checksum(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        download([server.url("truncated")], tmp_path / "x" / NAME, sha256=None, timeout=2.0)
    assert "truncated transfer" in str(exc.value)
    assert leftovers(tmp_path / "x") == []


def test_load_mnist_downloads_missing_files_from_the_mirrors(server: Server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    mirrors = [f"{server.base}/garbage/", f"{server.base}/good"]
    data = load_mnist(data_dir, seed=0, val_fraction=0.1, mirrors=mirrors, timeout=5.0)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert sorted(leftovers(data_dir / "mnist")) == sorted(f.name for f in _mnist_files())
    for f in _mnist_files():
        assert sha256(data_dir / "mnist" / f.name) in f.sha256  # verified against the table
    server.requests.clear()
    offline = load_mnist(data_dir, seed=0, val_fraction=0.1, download=False)
    assert server.requests == [] and torch.equal(offline.val.y, data.val.y)


def test_load_mnist_with_only_bad_mirrors_fails_cleanly(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path, seed=0, val_fraction=0.1, mirrors=[f"{server.base}/garbage"], timeout=2.0)
    assert "\n" not in str(exc.value) and "train-images-idx3-ubyte.gz" in str(exc.value)
    assert leftovers(tmp_path / "mnist") == []
