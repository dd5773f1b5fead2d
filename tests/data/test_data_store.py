"""Memory-mapped data stores (data.storage: mmap, fedopt.data.store) and the streamed pieces of
Synthetic that let a population larger than memory be built: generating parameters drawn chunk
by chunk, the test split drawn chunk by chunk, passes over all rows in chunks."""
import copy
import json
import os

import numpy as np
import pytest
import torch

import fedopt.data.store as store
import fedopt.data.synthetic as synthetic
from fedopt.client_eval import ClientRows
from fedopt.config import load_config
from fedopt.data import FederatedDataset, build_dataset
from fedopt.data.assemble import held_out_mask
from fedopt.data.checks import seed_streams
from fedopt.data.dataset import check_values
from fedopt.schema import ConfigError
from fedopt.simulation import Simulation

FIELDS = ("x", "y", "offsets", "x_test", "y_test", "client_test")
NPY = {"x": "x_train", "y": "y_train", "offsets": "offsets", "x_test": "x_test",
       "y_test": "y_test", "client_test": "client_test"}
SMALL = {"name": "synthetic", "num_clients": 40, "min_samples": 5, "max_samples": 60}


def _mmap(tmp_path, **keys):
    return {**SMALL, "storage": "mmap", "cache_dir": str(tmp_path / "store"), **keys}


# ----------------------------------------------------------------------------- the streams

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_draws_in_pieces_equal_one_draw(seed):
    """What the streamed builder relies on (numpy's Generator, PCG64): normal with an array
    mean, random() and float32 standard_normal, called on consecutive pieces of an array in
    order, give the numbers of one call over the whole array."""
    k, c, d = 301, 4, 7
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=k)
    cuts = np.sort(np.random.default_rng(seed + 10).choice(np.arange(1, k), 12, replace=False))
    bounds = list(zip([0, *cuts], [*cuts, k]))
    for draw in (lambda g, lo, hi: g.normal(loc[lo:hi, None, None], 1.0, size=(hi - lo, c, d)),
                 lambda g, lo, hi: g.random(hi - lo),
                 lambda g, lo, hi: g.standard_normal((hi - lo, d), dtype=np.float32)):
        whole = draw(np.random.default_rng(seed), 0, k)
        g = np.random.default_rng(seed)
        assert np.array_equal(whole, np.concatenate([draw(g, lo, hi) for lo, hi in bounds]))


@pytest.mark.parametrize("iid", [False, True])
def test_model_stream_gives_draw_model_numbers_chunk_by_chunk(monkeypatch, iid):
    monkeypatch.setattr(synthetic, "MODEL_CHUNK_BYTES", 8 * 3 * 60)   # W skipped 3 clients a time
    k = 23
    ref = synthetic.draw_model(seed_streams(5, 4)[0], k, 1.5, 0.5, iid, 6, 3)
    stream = synthetic.ModelStream(seed_streams(5, 4)[0], k, 1.5, 0.5, iid, 6, 3)
    parts = [stream.take(n) for n in (1, 7, 2, 13)]
    for i, name in enumerate(("W", "b", "v")):
        assert np.array_equal(np.concatenate([p[i] for p in parts]), getattr(ref, name)), name
    with pytest.raises(ValueError, match="ModelStream.take"):
        stream.take(1)


def test_chunked_split_equals_the_split_of_all_clients():
    sizes = np.random.default_rng(0).integers(1, 40, size=50)
    client = np.repeat(np.arange(50), sizes)
    ref = held_out_mask(client, 50, 0.3, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    got = [synthetic.chunk_held_out(sizes[lo:hi], lo, 0.3, rng)
           for lo, hi in ((0, 1), (1, 20), (20, 21), (21, 50))]
    assert np.array_equal(np.concatenate(got), ref)


# ----------------------------------------------------------------------------- the store

def _mapped_file(t: torch.Tensor) -> tuple[str, str] | None:
    """(file, permissions) of the memory map that holds the tensor's first byte
    (/proc/self/maps), if any."""
    addr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(a, 16) for a in parts[0].split("-"))
            if lo <= addr < hi and len(parts) > 5 and parts[5].startswith("/"):
                return parts[5], parts[1]
    return None


@pytest.mark.parametrize("keys", [{}, {"iid": True, "test_fraction": 0.0},
                                  {"alpha": 0.5, "max_samples": None, "num_clients": 9}])
def test_mmap_store_has_the_in_memory_numbers_and_maps_them(tmp_path, monkeypatch, keys):
    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", 97)   # many chunks
    mem = build_dataset({**SMALL, **keys}, seed=3)
    disk = build_dataset(_mmap(tmp_path, **keys), seed=3)
    for f in FIELDS:
        assert torch.equal(getattr(mem, f), getattr(disk, f)), f
        if getattr(disk, f).numel():
            # a read-only map of the store's file (a private writable one is charged to the
            # commit limit in full: 45 GB of features are refused on a 24 GB machine)
            assert _mapped_file(getattr(disk, f)) == (
                str(tmp_path / "store" / f"{NPY[f]}.npy"), "r--s"), f
            assert _mapped_file(getattr(mem, f)) is None, f
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["request"]["seed"] == 3 and manifest["arrays"]["x_train"] == {
        "shape": list(mem.x.shape), "dtype": "<f4"}
    assert not [p for p in os.listdir(tmp_path) if p != "store"]   # the temporary dir is gone


def test_a_second_run_reuses_the_store(tmp_path, monkeypatch):
    first = build_dataset(_mmap(tmp_path), seed=0)
    mtimes = {p: os.stat(tmp_path / "store" / p).st_mtime_ns
              for p in os.listdir(tmp_path / "store")}

    def no_build(*args, **kwargs):
        raise AssertionError("the store was rebuilt")

    monkeypatch.setattr(synthetic, "_stream_synthetic", no_build)
    again = build_dataset(_mmap(tmp_path), seed=0)
    for f in FIELDS:
        assert torch.equal(getattr(first, f), getattr(again, f)), f
    assert mtimes == {p: os.stat(tmp_path / "store" / p).st_mtime_ns
                      for p in os.listdir(tmp_path / "store")}


@pytest.mark.parametrize("change, field", [({"num_clients": 41}, "data.num_clients"),
                                           ({"alpha": 0.5}, "data.alpha"),
                                           ({"seed": 1}, "seed")])
def test_a_store_of_another_request_is_refused_naming_the_field(tmp_path, change, field):
    build_dataset(_mmap(tmp_path), seed=0)
    before = sorted(os.listdir(tmp_path / "store"))
    seed = change.pop("seed", 0)
    with pytest.raises(ConfigError) as error:
        build_dataset(_mmap(tmp_path, **change), seed=seed)
    assert str(error.value).startswith(f"{field}: the data store at ")
    assert sorted(os.listdir(tmp_path / "store")) == before
    cfg = {"seed": seed, "data": _mmap(tmp_path, **change), "model": {"name": "logreg"},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
           "client": {"local_steps": 1}}
    with pytest.raises(ConfigError) as validate_error:   # fedopt validate refuses it too
        load_config(cfg)
    assert str(validate_error.value) == str(error.value)


@pytest.mark.parametrize("make", ["empty dir", "file", "other files"])
def test_a_directory_fedopt_did_not_create_is_never_written(tmp_path, make):
    target = tmp_path / "store"
    if make == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        if make == "other files":
            (target / "notes.txt").write_text("mine")
    before = sorted(os.listdir(target)) if target.is_dir() else target.read_text()
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: .* exists and is not a"):
        build_dataset(_mmap(tmp_path), seed=0)
    assert (sorted(os.listdir(target)) if target.is_dir() else target.read_text()) == before
    assert os.listdir(tmp_path) == ["store"]


def test_a_store_that_cannot_be_created_is_a_config_error(tmp_path):
    """cache_dir below a file (or in a read-only or unwritable folder): the OSError of creating
    the store's folders becomes one ConfigError naming data.cache_dir; the file is untouched."""
    (tmp_path / "afile").write_text("mine")
    keys = {**SMALL, "storage": "mmap", "cache_dir": str(tmp_path / "afile" / "store")}
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: cannot create the data store at "
                                          r".*afile/store"):
        build_dataset(keys, seed=0)
    assert os.listdir(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_a_failed_build_leaves_no_store_and_no_temporary_directory(tmp_path, monkeypatch):
    real = store._FileColumn._write
    calls = []

    def fail_on_third(self, values):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        real(self, values)

    monkeypatch.setattr(store._FileColumn, "_write", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(_mmap(tmp_path), seed=0)
    assert os.listdir(tmp_path) == []


def test_a_damaged_store_is_reported_not_reused(tmp_path):
    build_dataset(_mmap(tmp_path), seed=0)
    with open(tmp_path / "store" / "x_train.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: the store at .* is damaged"):
        build_dataset(_mmap(tmp_path), seed=0)


def test_default_store_path_is_in_the_user_cache_keyed_by_the_request(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    keys = {**SMALL, "storage": "mmap"}
    build_dataset(keys, seed=0)
    build_dataset({**keys, "alpha": 0.5}, seed=0)
    stores = sorted(os.listdir(tmp_path / "fedopt" / "data"))
    assert len(stores) == 2 and all(s.startswith("synthetic-") and len(s) == 26 for s in stores)


def test_storage_keys_are_checked():
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: read only with data\.storage: mmap"):
        build_dataset({**SMALL, "cache_dir": "/tmp/x"}, seed=0)
    with pytest.raises(ConfigError, match=r"^data\.storage"):
        build_dataset({**SMALL, "storage": "disk"}, seed=0)


def test_the_store_must_fit_on_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "disk_free_bytes", lambda path: 1000)
    with pytest.raises(ConfigError, match=r"^data\.num_clients: 40 clients draw .* GiB free on "
                                          r"the disk of .*\(data\.cache_dir\)"):
        build_dataset(_mmap(tmp_path), seed=0)
    assert os.listdir(tmp_path) == []


def test_mmap_needs_memory_for_a_chunk_not_for_the_rows(tmp_path, monkeypatch):
    """Free memory below what the rows take in RAM: the in-memory build is refused (pointing
    to mmap), the mmap build goes through and gives the same numbers."""
    keys = synthetic.check_synthetic(**{k: v for k, v in SMALL.items() if k != "name"})
    rows = float(synthetic.check_synthetic_memory(0, keys).sum())
    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", 64)
    free = int(synthetic.synthetic_nbytes(40, 60, 10, False, rows, "mmap")) + 1
    reference = build_dataset(SMALL, seed=0)
    monkeypatch.setattr(synthetic, "available_memory_bytes", lambda device: free)
    with pytest.raises(ConfigError, match=r"^data\.num_clients: .*\(data\.storage: mmap keeps"):
        build_dataset(SMALL, seed=0)
    disk = build_dataset(_mmap(tmp_path), seed=0)
    assert all(torch.equal(getattr(reference, f), getattr(disk, f)) for f in FIELDS)


def test_simulation_trajectory_is_the_same_from_the_store(tmp_path):
    def run(data):
        cfg = load_config({"seed": 4, "data": data, "model": {"name": "logreg"},
                           "algorithm": {"name": "fedavg", "rounds": 3, "clients_per_round": 6},
                           "client": {"local_steps": 4, "batch_size": 8,
                                      "optimizer": {"name": "sgd", "lr": 0.1}},
                           "eval_clients": 10})
        sim = Simulation(cfg)
        rows = [(sim.step(), sim.evaluate()) for _ in range(3)]
        sim.close()
        return rows, sim.state.params

    mem_rows, mem_params = run(SMALL)
    disk_rows, disk_params = run(_mmap(tmp_path))
    assert mem_rows == disk_rows
    assert all(torch.equal(mem_params[k], disk_params[k]) for k in mem_params)


# ----------------------------------------------------------------------------- passes in chunks

def _unsorted_dataset():
    rng = np.random.default_rng(0)
    k, c = 7, 3
    counts = rng.integers(1, 9, size=k)
    ct = rng.integers(0, k, size=40)
    return FederatedDataset(
        x=torch.randn(int(counts.sum()), 2), y=torch.as_tensor(rng.integers(0, c, counts.sum())),
        offsets=torch.as_tensor(np.concatenate([[0], np.cumsum(counts)])),
        x_test=torch.randn(40, 2), y_test=torch.as_tensor(rng.integers(0, c, 40)),
        client_test=torch.as_tensor(ct), num_classes=c, name="t")


@pytest.mark.parametrize("sort", [False, True])
def test_client_rows_read_in_chunks(monkeypatch, sort):
    import fedopt.client_eval as client_eval

    monkeypatch.setattr(client_eval, "SCAN_ROWS", 6)
    ct = _unsorted_dataset().client_test.numpy()
    ct = np.sort(ct) if sort else ct
    index = ClientRows(torch.as_tensor(ct), 8)    # client 7 has no rows
    assert (index.order is None) == sort
    ids = np.array([0, 3, 5, 7])
    rows, group = index.rows(ids)
    assert rows.tolist() == [r for i in ids for r in np.flatnonzero(ct == i)]
    assert group.tolist() == [g for g, i in enumerate(ids) for _ in np.flatnonzero(ct == i)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_counts_in_chunks(monkeypatch, split):
    import fedopt.data.dataset as dataset

    monkeypatch.setattr(dataset, "SCAN_ROWS", 5)
    d = _unsorted_dataset()
    y = (d.y if split == "train" else d.y_test).numpy()
    client = (np.repeat(np.arange(7), np.diff(d.offsets.numpy())) if split == "train"
              else d.client_test.numpy())
    expected = np.zeros((7, 3), dtype=np.int64)
    for i, c in zip(client, y):
        expected[i, c] += 1
    assert d.label_counts(split).tolist() == expected.tolist()


def test_check_values_finds_a_nan_in_the_last_chunk(monkeypatch):
    import fedopt.data.dataset as dataset

    monkeypatch.setattr(dataset, "SCAN_ROWS", 1)   # chunks of 4 rows of 2 features
    d = _unsorted_dataset()
    check_values(d)
    x = d.x.clone()
    x[-1, 1] = float("nan")
    with pytest.raises(ConfigError, match=r"^FederatedDataset\.x contains NaN"):
        check_values(copy.copy(d).__class__(**{**d.__dict__, "x": x}))


def _resident(t: torch.Tensor, lo: int, hi: int) -> list[bool]:
    """Whether each page of rows lo:hi of a mapped tensor is in memory (mincore(2))."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    row = t.stride(0) * t.element_size()
    first = (t.data_ptr() + int(lo) * row) // page * page
    n = -(-(t.data_ptr() + int(hi) * row - first) // page)
    vec = (ctypes.c_ubyte * n)()
    assert libc.mincore(ctypes.c_void_p(first), ctypes.c_size_t(n * page), vec) == 0
    return [bool(v & 1) for v in vec]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise and mincore")
def test_read_ahead_reads_the_rows_asked_for_and_only_those(tmp_path):
    import time

    d = build_dataset(_mmap(tmp_path, num_clients=400, min_samples=50, max_samples=50), seed=0)
    x = d.x                                   # 400 clients x 40 rows x 240 bytes: 940 pages
    with open(tmp_path / "store" / "x_train.npy", "rb") as f:   # drop the file's pages
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert not any(_resident(x, 0, x.shape[0]))
    off = d.offsets.numpy()
    store.read_ahead((x, d.y, torch.zeros(3)), off[[100, 399]], off[[101, 400]])  # two clients
    deadline = time.time() + 5
    while not all(_resident(x, off[100], off[101]) + _resident(x, off[399], off[400])):
        assert time.time() < deadline, "the rows asked for were not read"
        time.sleep(0.01)
    assert not any(_resident(x, off[200], off[300]))   # far from both: not read


# ----------------------------------------------------------------------------- review follow-ups

@pytest.mark.parametrize("damage", [{"request": None}, {"arrays": 3}, {"request": {"seed": 0}}])
def test_a_hand_edited_manifest_is_a_config_error(tmp_path, damage):
    build_dataset(_mmap(tmp_path), seed=0)
    path = tmp_path / "store" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(damage)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"data\.cache_dir"):
        build_dataset(_mmap(tmp_path), seed=0)


def test_an_interrupted_build_is_named_in_a_warning_and_left_alone(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    leftover = tmp_path / f".store.tmp-{int(dead.stdout)}-abcd1234"
    leftover.mkdir()
    (leftover / "x_train.npy").write_bytes(b"partial")
    live = tmp_path / f".store.tmp-{os.getpid()}-00000000"      # this process: still running
    live.mkdir()
    with pytest.warns(UserWarning, match="unfinished build") as caught:
        data = build_dataset(_mmap(tmp_path), seed=0)
    message = str(caught[0].message)
    assert str(leftover) in message and str(live) not in message
    assert (leftover / "x_train.npy").read_bytes() == b"partial" and live.is_dir()
    assert data.num_clients == SMALL["num_clients"]


def test_read_ahead_survives_a_refused_hint(tmp_path, monkeypatch):
    """madvise is only a hint: a kernel that refuses it (EINVAL, ENOMEM) never fails a round."""
    data = build_dataset(_mmap(tmp_path), seed=0)
    calls = []

    def refuse(m, start, length):
        calls.append((start, length))
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(store, "_advise", refuse)
    store.read_ahead((data.x,), np.array([0, 5]), np.array([3, 9]))
    assert calls                                   # the hint was asked for, and refused


def test_another_dtype_of_a_mapped_data_set_must_fit_in_memory(tmp_path, monkeypatch):
    data = build_dataset(_mmap(tmp_path), seed=0)
    cpu = torch.device("cpu")
    store.check_mapped_copy(data, cpu, torch.float32)          # as stored: never copied
    store.check_mapped_copy(data, cpu, torch.float64)          # small: fits
    monkeypatch.setattr("fedopt.memory.available_memory_bytes", lambda device: 100)
    store.check_mapped_copy(data, cpu, torch.float32)
    with pytest.raises(ConfigError, match=r"^executor\.dtype: the memory-mapped data set"):
        store.check_mapped_copy(data, cpu, torch.float64)
    in_memory = build_dataset(SMALL, seed=0)                   # not mapped: not this check's
    store.check_mapped_copy(in_memory, cpu, torch.float64)
