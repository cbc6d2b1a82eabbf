"""Loaders on small generated files, the real MNIST test set when present, splitting and scaling."""

import gzip

import numpy as np
import pytest

from gpubp.data import (encode_labels, load_csv, load_dataset, load_digits, load_idx_folder,
                        load_npz, split, standardize)
from gpubp.errors import DataError
from gpubp.idx import read_idx

from .conftest import MNIST_T10K


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist_pair(folder, prefix, n, rng, gz=True, rows=4, cols=3):
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(opener(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(opener(idx_bytes(labels)))
    return images, labels


def test_digits():
    d = load_digits()
    assert d.X.shape == (1797, 64) and d.y.shape == (1797,)
    assert d.n_classes == 10 and list(d.classes) == list(range(10))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_with_one_pair(tmp_path, rng, gz):
    images, labels = write_mnist_pair(tmp_path, "t10k", 20, rng, gz=gz)
    data, test = load_idx_folder(tmp_path)
    assert test is None
    assert data.X.shape == (20, 12)
    np.testing.assert_allclose(data.X, images.reshape(20, 12) / 255.0)
    np.testing.assert_array_equal(data.classes[data.y], labels)


def test_idx_folder_with_train_and_test(tmp_path, rng):
    write_mnist_pair(tmp_path, "train", 30, rng)
    write_mnist_pair(tmp_path, "t10k", 10, rng, gz=False)
    train, test = load_idx_folder(tmp_path)
    assert len(train) == 30 and len(test) == 10
    train2, test2 = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(train2.X, train.X)


@pytest.mark.parametrize("type_code, dtype", [(0x0B, ">i2"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_read_idx_other_types(tmp_path, rng, type_code, dtype):
    array = rng.normal(scale=100, size=(3, 2, 5)).astype(dtype)
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(array, type_code))
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_errors(tmp_path, rng):
    images, _ = write_mnist_pair(tmp_path, "a", 5, rng, gz=False)
    good = (tmp_path / "a-images-idx3-ubyte").read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(good[:-7])
    with pytest.raises(DataError, match="truncated: shape \\(5, 4, 3\\) needs 60 bytes of data, the file has 53"):
        read_idx(bad)
    bad.write_bytes(good + b"xx")
    with pytest.raises(DataError, match="too long"):
        read_idx(bad)
    bad.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    bad.write_bytes(good)
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        read_idx(bad, expected_magic=2049)
    bad.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(bad)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


def test_idx_count_mismatch_and_missing_pair(tmp_path, rng):
    write_mnist_pair(tmp_path, "train", 5, rng)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        load_idx_folder(tmp_path)
    labels.unlink()
    with pytest.raises(DataError, match="no IDX image/label pair"):
        load_idx_folder(tmp_path)


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason=f"{MNIST_T10K} is absent")
def test_real_mnist_test_set():
    data, test = load_dataset(str(MNIST_T10K))
    assert test is None
    assert data.X.shape == (10000, 784)
    assert 0 <= data.X.min() and data.X.max() == 1.0
    counts = np.bincount(data.y)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_npz(tmp_path, rng):
    X = rng.normal(size=(6, 3))
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.array([3, 5, 3, 5, 7, 7]))
    d = load_npz(path)
    np.testing.assert_array_equal(d.X, X)
    assert d.classes.tolist() == [3, 5, 7] and d.y.tolist() == [0, 1, 0, 1, 2, 2]
    np.savez(path, features=X, y=np.zeros(6))
    with pytest.raises(DataError, match="needs arrays named 'X' and 'y', found \\['features', 'y'\\]"):
        load_npz(path)
    np.savez(path, X=np.array([[1], "a"], dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(path)
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(path)
    np.savez(path, X=X[:5], y=np.zeros(6))
    with pytest.raises(DataError, match="5 samples but 6 labels"):
        load_npz(path)
    X[2, 1] = np.nan
    np.savez(path, X=X, y=np.zeros(6))
    with pytest.raises(DataError, match="NaN or infinity .*sample 2"):
        load_npz(path)


def test_csv_with_header_and_named_label(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("f1,f2,label\n0.5,1,cat\n2,3,dog\n4,5.5,cat\n")
    d = load_csv(path)
    np.testing.assert_array_equal(d.X, [[0.5, 1], [2, 3], [4, 5.5]])
    assert d.classes.tolist() == ["cat", "dog"] and d.y.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="could not convert string 'cat'"):
        load_csv(path, label_column="f1")  # the text column would become a feature
    path.write_text("a,b,c\n1,7,3\n4,8,6\n")
    d = load_csv(path, label_column="b")
    assert d.classes.tolist() == [7, 8]
    np.testing.assert_array_equal(d.X, [[1, 3], [4, 6]])


def test_csv_without_header_takes_the_first_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,0.5,0.25\n0,1.5,2\n1,3,4\n")
    d = load_csv(path)
    assert d.classes.tolist() == [0, 1] and d.y.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(d.X, [[0.5, 0.25], [1.5, 2], [3, 4]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2,3\n1,2\n", "number of columns changed|columns"),
        ("label,a\n1,x\n", "could not convert|x"),
        ("", "empty file"),
        ("label\n1\n", "at least one feature column"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_csv(path)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no such data set or file"):
        load_dataset(str(tmp_path / "nope.csv"))
    other = tmp_path / "data.parquet"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown data format '.parquet'"):
        load_dataset(str(other))


def test_stratified_split_keeps_class_shares():
    d = load_digits()
    train, test = split(d, 0.2, seed=0)
    assert len(train) + len(test) == len(d) and abs(len(test) - 0.2 * len(d)) <= 1
    share = np.bincount(d.y) / len(d)
    np.testing.assert_allclose(np.bincount(test.y) / len(test), share, atol=0.01)
    again, _ = split(d, 0.2, seed=0)
    np.testing.assert_array_equal(again.X, train.X)
    other, _ = split(d, 0.2, seed=1)
    assert not np.array_equal(other.X, train.X)


def test_split_with_a_lonely_class():
    d = load_digits()
    d.y = d.y.copy()
    d.y[0] = 10
    d.classes = np.arange(11)
    with pytest.raises(DataError, match="cannot split"):
        split(d, 0.2)


def test_standardize_is_fitted_on_train_only(rng):
    train, test = split(load_digits(), 0.3, seed=0)
    scaler, (s_train, s_test) = standardize(train, test)
    np.testing.assert_allclose(s_train.X.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(scaler.mean_, train.X.mean(axis=0))
    np.testing.assert_allclose(s_test.X, (test.X - train.X.mean(axis=0)) / scaler.scale_)


def test_encode_labels_with_known_classes():
    y, classes = encode_labels(np.array(["b", "a", "b"]))
    assert classes.tolist() == ["a", "b"] and y.tolist() == [1, 0, 1]
    assert encode_labels(np.array(["a"]), classes)[0].tolist() == [0]
    with pytest.raises(DataError, match="not among the training classes"):
        encode_labels(np.array(["c"]), classes)
