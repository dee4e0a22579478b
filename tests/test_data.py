"""evoens.datasets: splits, the Batcher's exact resume, synthetic data, IDX/CIFAR readers, loaders."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evoens.datasets import (
    DATASETS,
    Batcher,
    DataError,
    DataSplits,
    Split,
    load_cifar10,
    load_cifar10_1,
    load_dataset,
    load_digits,
    load_mnist,
    load_mnist1d,
    make_gaussian,
    read_idx,
    resolve_data_dir,
    split_train_val,
)
from evoens.datasets.synthetic import make_teacher

REPO = Path(__file__).resolve().parents[1]


def mnist_dir() -> Path:
    """The real MNIST files: $EVOENS_MNIST_DIR, else ../shared/data/mnist beside the repository."""
    path = Path(os.environ.get("EVOENS_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist")
    if not (path / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {path} (set EVOENS_MNIST_DIR or clone shared/ beside the repo)")
    return path


def assert_one_line_naming(exc: pytest.ExceptionInfo[DataError], name: str | Path) -> None:
    message = str(exc.value)
    assert "\n" not in message and str(name) in message, message


def indexed_split(labels: list[int]) -> Split:
    """x[i] = i, so a split's x tells which examples it holds."""
    return Split(torch.arange(len(labels), dtype=torch.float32)[:, None], torch.tensor(labels))


def rows(split: Split) -> Counter[bytes]:
    return Counter(row.numpy().tobytes() for row in split.x)


# --- splits -------------------------------------------------------------------------------------


def test_split_train_val_partitions_deterministically_and_stratifies() -> None:
    labels = [c for c in range(5) for _ in range(20 + 7 * c)]  # unbalanced classes
    full = indexed_split(labels)
    train, val = split_train_val(full, val_fraction=0.25, seed=3)
    ids = torch.cat([train.x[:, 0], val.x[:, 0]]).long()
    assert sorted(ids.tolist()) == list(range(len(labels)))  # disjoint and complete
    for c in range(5):
        n_c = labels.count(c)
        assert int((val.y == c).sum()) == int(n_c * 0.25 + 0.5)  # per-class quota
    again = split_train_val(full, val_fraction=0.25, seed=3)
    assert torch.equal(again[1].x, val.x)
    other = split_train_val(full, val_fraction=0.25, seed=4)
    assert not torch.equal(other[1].x, val.x)
    assert torch.all(train.x[1:, 0] > train.x[:-1, 0])  # original order kept


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_train_val_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(DataError) as exc:
        split_train_val(indexed_split([0, 1, 0, 1]), val_fraction=fraction, seed=0)
    assert_one_line_naming(exc, "val_fraction")


def test_split_and_datasplits_reject_inconsistent_shapes() -> None:
    with pytest.raises(DataError):
        Split(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    split = Split(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError) as exc:
        DataSplits("toy", split, split, split, num_classes=2, input_shape=(3,))
    assert_one_line_naming(exc, "toy")


# --- digits -------------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_disjoint_splits() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    data = load_digits(seed=0, val_fraction=0.1, test_fraction=0.2)
    assert (data.name, data.num_classes, data.input_shape) == ("digits", 10, (64,))
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (64,) and split.x.min() >= 0.0 and split.x.max() <= 1.0
        assert set(split.y.unique().tolist()) == set(range(10))
    assert len(data.test) == pytest.approx(1797 * 0.2, abs=10)
    assert len(data.val) == pytest.approx((1797 - len(data.test)) * 0.1, abs=10)
    full = Split(torch.from_numpy(sklearn_digits().data).float() / 16, torch.zeros(1797, dtype=torch.long))
    assert rows(data.train) + rows(data.val) + rows(data.test) == rows(full)  # a partition of all 1797


def test_digits_deterministic_by_seed_with_a_fixed_test_split() -> None:
    a, b, c = (load_digits(seed=seed, val_fraction=0.1, test_fraction=0.2) for seed in (1, 1, 2))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x)  # the test split does not move with the run seed


def test_datasplits_to_moves_every_split() -> None:
    data = make_gaussian(seed=0, n_train=64, n_test=16).to("cpu")
    assert isinstance(data, DataSplits) and data.train.x.device.type == "cpu"


# --- Batcher ------------------------------------------------------------------------------------


def drain(batcher: Batcher, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batcher.next() for _ in range(steps)]


@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 16, 64])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batcher_exact_resume(n: int, batch_size: int, drop_last: bool) -> None:
    split = indexed_split([i % 3 for i in range(n)])
    for pause in (0, 1, 2, 5, 9):  # mid-epoch, at epoch boundaries, several epochs in
        original = Batcher(split, batch_size, seed=11, drop_last=drop_last)
        drain(original, pause)
        state = original.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)  # a checkpoint round trip, loaded like the run loads it
        buffer.seek(0)
        restored = Batcher(split, batch_size, seed=999, drop_last=drop_last)  # the seed comes from the state
        restored.load_state_dict(torch.load(buffer, weights_only=True))
        for (xa, ya), (xb, yb) in zip(drain(original, 12), drain(restored, 12), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert restored.epoch == original.epoch and restored.position == original.position


def test_batcher_epoch_covers_every_example_once() -> None:
    split = indexed_split([i % 4 for i in range(23)])
    batcher = Batcher(split, 5, seed=0)
    epochs = []
    for _ in range(3):
        batches = drain(batcher, 5)  # 5 + 5 + 5 + 5 + 3
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        ids = torch.cat([x[:, 0] for x, _ in batches]).long()
        assert sorted(ids.tolist()) == list(range(23))
        epochs.append(ids)
    assert batcher.epoch == 2
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    again = Batcher(split, 5, seed=0)
    assert torch.equal(torch.cat([x[:, 0] for x, _ in drain(again, 5)]).long(), epochs[0])


def test_batcher_drop_last_keeps_batches_full() -> None:
    batcher = Batcher(indexed_split([0] * 23), 5, seed=0, drop_last=True)
    assert [len(y) for _, y in drain(batcher, 9)] == [5] * 9
    assert batcher.epoch == 2


def test_batcher_whole_split_and_errors() -> None:
    split = indexed_split([0, 1, 2])
    x, y = Batcher(split, 0, seed=0).next()
    assert x is split.x and y is split.y
    with pytest.raises(DataError):
        Batcher(split, -1, seed=0)
    state = Batcher(split, 2, seed=0).state_dict()
    with pytest.raises(DataError) as exc:
        Batcher(split, 3, seed=0).load_state_dict(state)
    assert_one_line_naming(exc, "batch_size")


@pytest.mark.gpu
def test_batcher_on_cuda_yields_the_cpu_batches() -> None:
    split = indexed_split([i % 3 for i in range(50)])
    on_cpu, on_gpu = Batcher(split, 8, seed=2), Batcher(split.to("cuda"), 8, seed=2)
    for (xa, ya), (xb, yb) in zip(drain(on_cpu, 15), drain(on_gpu, 15), strict=True):
        assert xb.is_cuda and torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())
    resumed = Batcher(split.to("cuda"), 8, seed=0)
    resumed.load_state_dict(on_gpu.state_dict())
    assert torch.equal(resumed.next()[0], on_gpu.next()[0])


# --- gaussian teacher ---------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_gaussian_teacher_is_deterministic_and_labels_are_its_argmax(binary: bool) -> None:
    kwargs: dict[str, Any] = {
        "n_train": 512,
        "n_test": 256,
        "in_dim": 8,
        "hidden": 16,
        "num_classes": 5,
        "binary_teacher": binary,
    }
    a, b, c = make_gaussian(seed=5, **kwargs), make_gaussian(seed=5, **kwargs), make_gaussian(seed=6, **kwargs)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    teacher = make_teacher(torch.Generator().manual_seed(5), in_dim=8, hidden=16, num_classes=5, binary=binary)
    assert torch.equal(teacher.labels(a.test.x), a.test.y)
    assert (a.num_classes, a.input_shape, len(a.train) + len(a.val), len(a.test)) == (5, (8,), 512, 256)
    assert len(a.test.y.unique()) >= 3  # the teacher uses most classes
    if binary:
        assert set(teacher.w1.unique().tolist()) == {-1.0, 1.0} == set(teacher.w2.unique().tolist())


def test_gaussian_rejects_bad_sizes() -> None:
    with pytest.raises(DataError) as exc:
        make_gaussian(seed=0, num_classes=1)
    assert_one_line_naming(exc, "num_classes")


# --- IDX reader ---------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int16, 0x0B), (np.float32, 0x0D)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips(tmp_path: Path, dtype: type, code: int, compress: bool) -> None:
    values = np.arange(24).reshape(2, 3, 4)
    array = (values if dtype is np.uint8 else values * 3 - 5).astype(dtype)
    data = idx_bytes(array, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, array) and out.flags.writeable


def test_read_idx_real_mnist_files() -> None:
    folder = mnist_dir()
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8 and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert read_idx(folder / "train-labels-idx1-ubyte.gz").shape == (60000,)


def corruptions(real_gz: bytes) -> dict[str, bytes]:
    raw = gzip.decompress(real_gz)
    flipped = bytearray(real_gz)
    flipped[len(flipped) // 2 : len(flipped) // 2 + 64] = bytes(64)
    return {
        "truncated-gz": real_gz[: len(real_gz) // 2],
        "corrupt-gz": bytes(flipped),
        "wrong-magic": b"\x01\x02" + raw[2:],
        "random-bytes": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "short-payload": raw[:-100],
        "long-payload": raw + b"\0",
        "bad-type-code": raw[:2] + b"\x07" + raw[3:],
        "short-header": raw[:6],
        "empty": b"",
    }


def test_read_idx_bad_files_raise_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    real = (mnist_dir() / "t10k-labels-idx1-ubyte.gz").read_bytes()
    for name, data in corruptions(real).items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(data)
        with pytest.raises(DataError) as exc:
            read_idx(path)
        assert_one_line_naming(exc, path)
    with pytest.raises(DataError) as exc:
        read_idx(tmp_path / "missing.gz")
    assert_one_line_naming(exc, tmp_path / "missing.gz")


# --- MNIST from the data directory ---------------------------------------------------------------


def test_load_mnist_from_the_real_files_offline() -> None:
    folder = mnist_dir()
    data = load_mnist(folder, seed=0, val_fraction=0.1, download=False)
    assert (data.num_classes, data.input_shape) == (10, (1, 28, 28))
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.train.x.dtype == torch.float32 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.test.x.min() == 0.0 and data.test.x.max() == 1.0 and data.test.y[:3].tolist() == [7, 2, 1]
    if folder.name == "mnist":  # DATA_DIR and DATA_DIR/mnist both work
        parent = load_dataset("mnist", data_dir=str(folder.parent), seed=0, download=False)
        assert torch.equal(parent.val.y, data.val.y)


def test_load_mnist_without_files_or_downloads_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path, seed=0, val_fraction=0.1, download=False)
    assert_one_line_naming(exc, tmp_path / "mnist")


def test_load_mnist_rejects_swapped_files(tmp_path: Path) -> None:
    folder = mnist_dir()
    (tmp_path / "mnist").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(folder / name, tmp_path / "mnist" / name)
    os.symlink(folder / "t10k-labels-idx1-ubyte.gz", tmp_path / "mnist" / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path, seed=0, val_fraction=0.1, download=False)
    assert_one_line_naming(exc, "train-labels-idx1-ubyte.gz")


def test_fashion_mnist_reads_the_upstream_folder_name(tmp_path: Path) -> None:
    folder = mnist_dir()  # MNIST's files stand in: both datasets ship the same four IDX file names
    (tmp_path / "fashion-mnist").mkdir()  # the folder keeps its upstream (kebab-case) name
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):  # fmt: skip
        os.symlink(folder / name, tmp_path / "fashion-mnist" / name)
    for data_dir in (tmp_path, tmp_path / "fashion-mnist"):  # DATA_DIR and DATA_DIR/fashion-mnist both work
        data = load_dataset("fashion_mnist", data_dir=str(data_dir), seed=0, download=False)
        assert (data.name, len(data.test)) == ("fashion_mnist", 10000)
    with pytest.raises(DataError) as exc:
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "empty"), seed=0, download=False)
    assert_one_line_naming(exc, tmp_path / "empty" / "fashion-mnist")


# --- mnist1d ------------------------------------------------------------------------------------


def test_mnist1d_generated_locally_and_cached(tmp_path: Path) -> None:
    py_state, np_state = random.getstate(), np.random.get_state()
    data = load_mnist1d(seed=0, val_fraction=0.1, data_dir=tmp_path)
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state[1])
    assert (data.name, data.num_classes, data.input_shape) == ("mnist1d", 10, (40,))
    assert (len(data.train) + len(data.val), len(data.test)) == (4000, 1000)  # mnist1d's own 80/20 split
    assert data.train.x.dtype == torch.float32 and set(data.test.y.unique().tolist()) == set(range(10))
    cached = list((tmp_path / "mnist1d").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    again = load_dataset("mnist1d", data_dir=str(tmp_path), seed=0)  # read back from the cache
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.val.y, data.val.y)


def test_mnist1d_options_and_a_broken_cache(tmp_path: Path) -> None:
    small = load_mnist1d(seed=0, val_fraction=0.1, data_dir=tmp_path, num_samples=200, generator_seed=7)
    assert (len(small.train) + len(small.val), len(small.test)) == (160, 40)
    (cache,) = (tmp_path / "mnist1d").glob("mnist1d-*.npz")
    cache.write_bytes(b"not an npz")  # a broken cache is regenerated, not fatal
    again = load_mnist1d(seed=0, val_fraction=0.1, data_dir=tmp_path, num_samples=200, generator_seed=7)
    assert torch.equal(again.test.x, small.test.x)
    with pytest.raises(DataError) as exc:
        load_mnist1d(seed=0, val_fraction=0.1, data_dir=tmp_path, url="https://example.org/x.pkl")
    assert_one_line_naming(exc, "url")


# --- CIFAR readers ------------------------------------------------------------------------------


def cifar_batch_bytes(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled like the originals: protocol 2, ndarray via numpy.core.multiarray."""
    batch = {"batch_label": "testing batch", "labels": labels, "data": images.reshape(len(labels), -1), "filenames": []}
    data = pickle.dumps(batch, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar10(folder: Path, n: int, *, archive: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = {name: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for name in names}
    blobs = {name: cifar_batch_bytes(images[name], [i % 10 for i in range(n)]) for name in names}
    folder.mkdir(parents=True)
    if archive:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (folder / "cifar-10-batches-py").mkdir()
        for name, blob in blobs.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(blob)
    return images


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_reads_python_batches(tmp_path: Path, archive: bool) -> None:
    images = write_cifar10(tmp_path / "cifar10", 20, archive=archive)
    data = load_cifar10(tmp_path, seed=0, val_fraction=0.1, download=False)
    assert (data.num_classes, data.input_shape) == (10, (3, 32, 32))
    assert (len(data.train) + len(data.val), len(data.test)) == (100, 20)
    assert torch.equal(data.test.x, torch.from_numpy(images["test_batch"]).float() / 255)  # CHW planes
    assert data.test.y.tolist() == [i % 10 for i in range(20)]


def test_cifar10_refuses_pickles_with_foreign_globals(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar10", 4, archive=False)
    evil = pickle.dumps({"data": os.getcwd, "labels": []}, protocol=2)  # any global but numpy's
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(evil)
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path, seed=0, val_fraction=0.1, download=False)
    assert_one_line_naming(exc, "data_batch_3")


def test_cifar10_1_is_the_test_split(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar10", 10, archive=False)
    (tmp_path / "cifar10.1").mkdir()
    ood = np.random.default_rng(1).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "cifar10.1" / "cifar10.1_v6_data.npy", ood)
    np.save(tmp_path / "cifar10.1" / "cifar10.1_v6_labels.npy", np.arange(2000) % 10)
    data = load_dataset("cifar10_1", data_dir=str(tmp_path), seed=0, download=False)  # files keep upstream names
    assert (data.name, len(data.test), data.test.x.shape[1:]) == ("cifar10_1", 2000, (3, 32, 32))
    assert torch.equal(data.test.x[5], torch.from_numpy(ood[5]).permute(2, 0, 1).float() / 255)
    with pytest.raises(DataError) as exc:
        load_cifar10_1(tmp_path, seed=0, val_fraction=0.1, version="v4", download=False)
    assert_one_line_naming(exc, "cifar10.1_v4_data.npy")


# --- the registry-facing API --------------------------------------------------------------------


def test_load_dataset_names_and_options() -> None:
    assert {"digits", "mnist1d", "gaussian", "mnist", "fashion_mnist", "cifar10", "cifar10_1"} <= set(DATASETS)
    data = load_dataset("gaussian", data_dir=None, seed=0, val_fraction=0.2, test_fraction=0.5, n_train=100)
    assert (len(data.train) + len(data.val), len(data.test)) == (100, 1024)  # test_fraction ignored here
    with pytest.raises(DataError) as exc:
        load_dataset("mnits", data_dir=None, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert_one_line_naming(exc, "mnits")
    assert "did you mean 'mnist'" in str(exc.value)
    with pytest.raises(DataError, match="did you mean 'fashion_mnist'"):  # the old kebab-case name
        load_dataset("fashion-mnist", data_dir=None, seed=0, val_fraction=0.1, test_fraction=0.2)
    with pytest.raises(DataError) as exc:
        load_dataset("digits", data_dir=None, seed=0, val_fraction=0.1, test_fraction=0.2, n_train=5)
    assert_one_line_naming(exc, "n_train")


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVOENS_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.setenv("EVOENS_DATA_DIR", "")
    assert resolve_data_dir() == tmp_path / "xdg" / "evoens" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir() == Path.home() / ".cache" / "evoens" / "data"
    assert resolve_data_dir("~/d") == Path.home() / "d"
