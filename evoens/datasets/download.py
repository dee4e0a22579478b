"""Checksum-verified, atomic downloads from an ordered list of mirrors.

A file is streamed to a temporary file beside its destination, hashed on the way, and moved into
place with ``os.replace`` only once its checksum matches, so a failed or interrupted download
never leaves a partial file under the final name. Each mirror's failure is recorded; when all fail
the one-line :class:`DataError` says what each one did.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from evoens.datasets.base import DataError

__all__ = ["atomic_write", "download", "file_digest", "mirror_urls"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class _MirrorError(Exception):
    """One mirror did not deliver a good file; the message says how."""


def mirror_urls(mirrors: Sequence[str], filename: str) -> list[str]:
    """``base/filename`` for each mirror base URL."""
    return [f"{base.rstrip('/')}/{filename}" for base in mirrors]


@contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``dest`` atomically when the block ends without an exception.

    The data goes to a uniquely named temp file beside ``dest`` (same file system, so the final
    ``os.replace`` is atomic); on any exception the temp file is removed and ``dest`` is untouched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the rename


def file_digest(path: Path) -> str:
    """The sha256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url_list: str | Sequence[str],
    dest: str | os.PathLike[str],
    *,
    sha256: str | Sequence[str] | None,
    timeout: float = 30.0,
) -> Path:
    """Download ``dest`` from the first mirror in ``url_list`` that delivers a good copy.

    ``sha256`` is the expected hex digest, or several accepted digests (for mirrors that serve the
    same content recompressed), or None to skip the check (the size is still checked against
    Content-Length). ``timeout`` bounds connecting and each read, in seconds. Returns ``dest``.
    """
    dest = Path(dest)
    urls = [url_list] if isinstance(url_list, str) else list(url_list)
    accepted = _accepted_digests(sha256)
    failures = []
    for url in urls:
        try:
            _fetch(url, dest, accepted, timeout)
            return dest
        except _MirrorError as exc:
            log.warning("download of %s from %s failed: %s", dest.name, url, exc)
            failures.append(f"{url}: {exc}")
        except OSError as exc:  # network errors are _MirrorError: this one is local
            raise DataError(f"{dest}: cannot be written ({exc}); choose a writable data directory") from None
    tried = "; ".join(failures) if failures else "no mirror URLs given"
    raise DataError(
        f"{dest.name}: download failed from every mirror ({tried}); check the network or the mirror "
        f"list, or copy the file to {dest} by hand"
    )


def _accepted_digests(sha256: str | Sequence[str] | None) -> frozenset[str]:
    if sha256 is None:
        return frozenset()
    return frozenset(d.lower() for d in ([sha256] if isinstance(sha256, str) else sha256))


def _fetch(url: str, dest: Path, accepted: frozenset[str], timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically; a checksum mismatch leaves ``dest`` untouched."""
    with atomic_write(dest) as out:
        digest = _stream(url, out, timeout)
        if accepted and digest not in accepted:
            raise _MirrorError(f"sha256 mismatch (got {digest[:16]}..., expected {_short(accepted)})")
    log.info("downloaded %s from %s", dest, url)


def _stream(url: str, out: BinaryIO, timeout: float) -> str:
    """Copy the response body of ``url`` to ``out``; its sha256. Failures become _MirrorError."""
    digest, size = hashlib.sha256(), 0
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _MirrorError(f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _MirrorError(_describe(exc, timeout)) from None
    if length is not None and length.isdigit() and int(length) != size:
        raise _MirrorError(f"truncated transfer ({size} of {length} bytes)")
    return digest.hexdigest()


def _describe(exc: BaseException, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if not isinstance(reason, BaseException):
        return str(reason)
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _short(accepted: frozenset[str]) -> str:
    return " or ".join(sorted(d[:16] + "..." for d in accepted))
