"""A strict reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number
of dimensions d, then d big-endian uint32 sizes, then the payload in big-endian order. Every way
a file can be wrong is a one-line :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from evoens.datasets.base import DataError

__all__ = ["IDX_DTYPES", "read_idx"]

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_REFETCH = "delete it and download it again (or copy a good copy there)"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip detected by content), in native byte order."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(
            f"{path}: not an IDX file (starts with {data[:4].hex() or 'nothing'}, expected 0000 + type "
            f"code + ndim); {_REFETCH}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} (known: 08 09 0b 0c 0d 0e); {_REFETCH}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: IDX header with {ndim} dimensions is truncated or empty; {_REFETCH}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: payload is {len(data) - header} bytes but the header promises {expected} "
            f"({'x'.join(map(str, shape))} of {dtype.name}); the file is truncated or corrupt; {_REFETCH}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=header)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)  # writable, native


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when they start with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the data directory (--data-dir / EVOENS_DATA_DIR)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); {_REFETCH}") from None
