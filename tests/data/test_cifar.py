"""CIFAR-10/100 python batches, written in the tests as the real files are (pickled dicts with
bytes keys, uint8 ``data`` [N, 3072], label lists): rows, partitions, the restricted unpickler,
and one clear error per missing or malformed file."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fedopt.config import validate
from fedopt.data import build_dataset
from fedopt.schema import ConfigError

C10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def write_batch(path, data, labels, key=b"labels", protocol=2, extra=None):
    d = {b"batch_label": b"training batch 1 of 5", key: list(map(int, labels)), b"data": data,
         b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    d.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=protocol)


def cifar10_folder(root, rows=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for name in C10_TRAIN + ["test_batch"]:
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, rows)
        write_batch(folder / name, data, labels)
        written[name] = (data, labels)
    return folder, written


def sorted_rows(x):
    x = np.asarray(x).reshape(x.shape[0], -1)
    return x[np.lexsort(x.T[::-1])]


def test_cifar10_rows_are_the_pixels_over_255_partitioned(tmp_path):
    folder, written = cifar10_folder(tmp_path)
    spec = {"name": "cifar10", "path": str(tmp_path), "num_clients": 6,     # parent folder
            "partition": {"name": "dirichlet", "alpha": 0.5}}
    d = build_dataset(spec, seed=3)
    assert d.num_clients == 6 and d.num_classes == 10 and d.feature_shape == (3, 32, 32)
    train = np.concatenate([written[n][0] for n in C10_TRAIN])
    labels = np.concatenate([written[n][1] for n in C10_TRAIN])
    # every train row once, as x / 255 with channel-major 32x32 planes
    want = np.concatenate([train.astype(np.float32) / 255, labels[:, None]], 1)
    got = np.concatenate([d.x.reshape(-1, 3072).numpy(), d.y[:, None].numpy()], 1)
    np.testing.assert_allclose(sorted_rows(got), sorted_rows(want), rtol=1e-6)
    r = train[0].reshape(3, 32, 32)     # plane 0 is red: pixel (row 1, col 2) is entry 34
    assert r[0, 1, 2] == train[0][34] and r[2, 0, 0] == train[0][2048]
    test_data, test_labels = written["test_batch"]
    assert d.x_test.shape[0] == test_data.shape[0]
    np.testing.assert_allclose(sorted_rows(d.x_test.numpy()),
                               sorted_rows(test_data.astype(np.float32) / 255), rtol=1e-6)
    # each test row goes to a client holding its class
    held = d.label_counts("train") > 0
    assert bool(held[d.client_test, d.y_test].all())
    again = build_dataset(spec, seed=3)
    assert torch.equal(again.x, d.x) and torch.equal(again.client_test, d.client_test)


@pytest.mark.parametrize("labels,classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, labels, classes):
    rng = np.random.default_rng(1)
    for name, n in (("train", 30), ("test", 10)):
        write_batch(tmp_path / name, rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    rng.integers(0, 100, n), key=b"fine_labels",
                    extra={b"coarse_labels": rng.integers(0, 20, n).tolist()})
    want = pickle.load(open(tmp_path / "train", "rb"))[labels.encode() + b"_labels"]
    d = build_dataset({"name": "cifar100", "path": str(tmp_path), "num_clients": 3,
                       "labels": labels}, 0)
    assert d.num_classes == classes and d.x.shape[0] == 30
    assert sorted(d.y.tolist()) == sorted(want)


def py2_pickle(obj):
    """The protocol-2 opcodes Python 2's cPickle writes for a CIFAR batch (the real files):
    byte strings as (SHORT_)BINSTRING, ints as BININT, a uint8 array as
    ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`` then BUILD with
    ``(1, shape, dtype("u1"), False, raw bytes)``."""
    out = [b"\x80\x02"]

    def string(b):
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256
                   else b"T" + struct.pack("<I", len(b)) + b)

    def integer(v):
        out.append(b"J" + struct.pack("<i", v))

    def write(o):
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                write(v)
            out.append(b"e")
        elif isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                write(k)
                write(v)
            out.append(b"u")
        else:
            assert isinstance(o, np.ndarray) and o.dtype == np.uint8 and o.ndim == 2
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.append(b"\x85")
            string(b"b")
            out.append(b"\x87R(")
            integer(1)
            integer(o.shape[0])
            integer(o.shape[1])
            out.append(b"\x86cnumpy\ndtype\n")
            string(b"u1")
            integer(0)
            integer(1)
            out.append(b"\x87R(")
            integer(3)
            string(b"|")
            out.append(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.append(b"tb\x89")
            string(o.tobytes())
            out.append(b"tb")
    write(obj)
    out.append(b".")
    return b"".join(out)


def test_files_written_by_python2_cpickle_load(tmp_path):
    folder, written = cifar10_folder(tmp_path, rows=4)
    for name in C10_TRAIN + ["test_batch"]:
        data, labels = written[name]
        raw = py2_pickle({b"batch_label": b"batch", b"labels": labels.tolist(), b"data": data,
                          b"filenames": [b"x_%d.png" % i for i in range(len(labels))]})
        ref = pickle.loads(raw, encoding="bytes")           # a valid pickle, as numpy reads it
        assert np.array_equal(ref[b"data"], data)
        (folder / name).write_bytes(raw)
    d = build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    np.testing.assert_allclose(sorted_rows(d.x_test.numpy()),
                               sorted_rows(written["test_batch"][0].astype(np.float32) / 255),
                               rtol=1e-6)
    assert sorted(d.y.tolist()) == sorted(np.concatenate([written[n][1] for n in C10_TRAIN]))


def test_numpy_2_module_names_load_too(tmp_path):
    folder, written = cifar10_folder(tmp_path, rows=4)
    assert b"numpy._core.multiarray" in (folder / "test_batch").read_bytes()
    d = build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    assert d.x.shape[0] == 20


def test_protocol_5_pickles_load(tmp_path):
    folder, written = cifar10_folder(tmp_path, rows=4)
    data, labels = written["test_batch"]
    write_batch(folder / "test_batch", data, labels, protocol=5)
    d = build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    np.testing.assert_allclose(sorted_rows(d.x_test.numpy()),
                               sorted_rows(data.astype(np.float32) / 255), rtol=1e-6)


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((2**40,),))


@pytest.mark.parametrize("payload,match", [
    ("command", r"refused global (posix|os|nt)\.system"),
    ("huge", r"numpy.ndarray called directly"),
    ("object dtype", r"not a plain numeric dtype"),
])
def test_restricted_unpickler_refuses_anything_but_plain_arrays(tmp_path, payload, match):
    folder, written = cifar10_folder(tmp_path, rows=2)
    marker = tmp_path / "ran"
    obj = {"command": {b"data": RunsCommand(marker)}, "huge": {b"data": HugeArray()},
           "object dtype": {b"data": np.array([None, 1], dtype=object)}}[payload]
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(ConfigError, match=r"data.path: .*data_batch_3 is not a CIFAR python "
                                          r"batch .*" + match):
        build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    assert not marker.exists()


def test_missing_batch_names_the_expected_files_in_run_and_validate(tmp_path):
    folder, _ = cifar10_folder(tmp_path, rows=2)
    (folder / "data_batch_3").unlink()
    spec = {"name": "cifar10", "path": str(folder), "num_clients": 2}
    match = (r"data.path: missing file .*data_batch_3 \(expected the cifar-10-batches-py "
             r"folder .* data_batch_1, .* data_batch_5, test_batch\)")
    with pytest.raises(ConfigError, match=match):
        build_dataset(spec, 0)
    cfg = {"data": spec, "model": {"name": "cnn", "channels": [4], "hidden": 8},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
           "client": {"local_steps": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}}}
    with pytest.raises(ConfigError, match=match):
        validate(cfg)
    write_batch(folder / "data_batch_3", np.zeros((2, 3072), np.uint8), [0, 1])
    assert validate(cfg)["data"]["name"] == "cifar10"


@pytest.mark.parametrize("write,match", [
    (lambda p: p.write_bytes(pickle.dumps({b"data": 1})[:-5]), r"is not a CIFAR python batch"),
    (lambda p: p.write_text("data,labels\n1,2\n"), r"is not a CIFAR python batch"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=2)), r"holds a list, expected"),
    (lambda p: write_batch(p, np.zeros((2, 3071), np.uint8), [0, 1]),
     r"'data' must be a uint8 array \[N, 3072\]"),
    (lambda p: write_batch(p, np.zeros((2, 3072), np.float64), [0, 1]),
     r"'data' must be a uint8 array"),
    (lambda p: write_batch(p, np.zeros((2, 3072), np.uint8), [0]),
     r"'labels' must be 2 integer labels"),
    (lambda p: write_batch(p, np.zeros((2, 3072), np.uint8), [0, 10]),
     r"'labels' holds label 10, outside 0..9"),
    (lambda p: write_batch(p, np.zeros((2, 3072), np.uint8), [0, 1], key=b"fine_labels"),
     r"lacks 'labels'"),
])
def test_malformed_batch_is_one_error_naming_the_file(tmp_path, write, match):
    folder, _ = cifar10_folder(tmp_path, rows=2)
    write(folder / "test_batch")
    with pytest.raises(ConfigError, match=r"data.path: .*test_batch.*" + match):
        build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)


def test_loading_is_refused_when_the_files_cannot_fit(tmp_path, monkeypatch):
    folder, _ = cifar10_folder(tmp_path, rows=2)
    total = sum(p.stat().st_size for p in folder.iterdir())
    monkeypatch.setattr("fedopt.data.files.available_memory_bytes", lambda d: 13 * total)
    with pytest.raises(ConfigError, match=r"data.path: loading the cifar10 files .* needs about"):
        build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _nested_list(depth):
    """A labels list of 2^depth ints in a few hundred bytes: each level holds the one below
    twice (a memo reference), as a crafted file can."""
    out = [b"\x80\x02J\x00\x00\x00\x00"]
    for i in range(depth):
        out.append(b"q" + bytes([i]) + b"0](h" + bytes([i]) + b"h" + bytes([i]) + b"e")
    return b"".join(out)


def _crafted(payload):
    """A small pickle that would make a naive reader allocate far more than its size."""
    if payload == "memo index":            # LONG_BINPUT 2^22: the C unpickler's memo grows to it
        return b"\x80\x02N" + b"r" + struct.pack("<I", 2**22) + b"."
    if payload == "frombuffer size":       # _frombuffer(2^24, uint8, (2^24,), "C"): bytes(2^24)
        return (b"\x80\x02" + _global("numpy.core.numeric", "_frombuffer") + b"("
                + b"J" + struct.pack("<i", 2**24) + _global("numpy", "dtype")
                + b"X\x02\x00\x00\x00u1\x85R" + b"J" + struct.pack("<i", 2**24) + b"\x85"
                + b"X\x01\x00\x00\x00Ct" + b"R.")
    # {b"data": a uint8 [1, 3072] array, b"labels": 2^21 ints from nested shared lists}
    data = pickle.dumps(np.zeros((1, 3072), np.uint8), protocol=2)[2:-1]
    return (b"\x80\x02}(U\x04data" + data + b"U\x06labels" + _nested_list(21)[2:] + b"u.")


@pytest.mark.parametrize("payload", ["memo index", "frombuffer size", "nested labels"])
def test_a_small_crafted_file_cannot_make_the_loader_allocate(tmp_path, payload):
    import tracemalloc

    folder, _ = cifar10_folder(tmp_path, rows=2)
    raw = _crafted(payload)
    assert len(raw) < 4096
    (folder / "test_batch").write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"data.path: .*test_batch"):
            build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{payload}: peak {peak / 2**20:.1f} MiB from {len(raw)} bytes"


def test_build_refuses_targets_other_than_arrays(tmp_path):
    """BUILD would set attributes on whatever object the file names (here the ndarray token
    the unpickler hands out for numpy.ndarray); only arrays are rebuilt."""
    folder, _ = cifar10_folder(tmp_path, rows=2)
    raw = (b"\x80\x02" + _global("numpy", "ndarray")
           + b"N}X\x07\x00\x00\x00__doc__X\x01\x00\x00\x00xs\x86b.")
    (folder / "test_batch").write_bytes(raw)
    with pytest.raises(ConfigError, match=r"test_batch is not a CIFAR python batch .*BUILD"):
        build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    from fedopt.data import cifar
    assert cifar._NdarrayToken.__doc__ != "x"


@pytest.mark.parametrize("container", ["dict key", "set"])
def test_nested_shared_tuples_are_refused_before_hashing(tmp_path, container):
    """A key of 28 levels of (t, t) pairs is 2^28 hashes (seconds) in under 250 bytes; each
    further level doubles it."""
    import time

    folder, _ = cifar10_folder(tmp_path, rows=2)
    out = [b"\x80\x02}" if container == "dict key" else b"\x80\x02\x8f(", b"J\x00\x00\x00\x00"]
    for i in range(28):
        out.append(b"q" + bytes([i]) + b"0h" + bytes([i]) + b"h" + bytes([i]) + b"\x86")
    out.append(b"Ns." if container == "dict key" else b"\x90.")
    (folder / "test_batch").write_bytes(b"".join(out))
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=r"test_batch is not a CIFAR python batch .*(dict key "
                                          r"of type tuple|a set)"):
        build_dataset({"name": "cifar10", "path": str(folder), "num_clients": 2}, 0)
    assert time.perf_counter() - t < 2.0
