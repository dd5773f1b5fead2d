"""LEAF JSON data (FEMNIST, Shakespeare, Sent140) from generated files in LEAF's exact layout:
rows, clients and encodings checked against direct per-sample computation, and one clear error
per malformed file."""
import json
import re

import numpy as np
import pytest

from fedopt.config import validate
from fedopt.data import build_dataset
from fedopt.data.leaf import SHAKESPEARE_VOCAB
from fedopt.schema import ConfigError


def write_leaf(root, split, name, users, counts=True):
    """One LEAF json file: ``users`` maps user -> (x list, y list)."""
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    doc = {"users": list(users), "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}
    if counts:
        doc["num_samples"] = [len(x) for x, _ in users.values()]
    (d / name).write_text(json.dumps(doc))


def femnist_user(rng, n):
    return rng.random((n, 784)).round(4).tolist(), rng.integers(0, 62, n).tolist()


@pytest.fixture
def femnist(tmp_path):
    rng = np.random.default_rng(0)
    train = {"f_b": femnist_user(rng, 5), "f_a": femnist_user(rng, 3)}
    train2 = {"f_c": femnist_user(rng, 4)}
    test = {"f_c": femnist_user(rng, 2), "f_b": femnist_user(rng, 1), "f_a": femnist_user(rng, 1)}
    write_leaf(tmp_path, "train", "all_data_1.json", train2)
    write_leaf(tmp_path, "train", "all_data_0.json", train)
    write_leaf(tmp_path, "test", "all_data_0.json", test, counts=False)
    return tmp_path, train, train2, test


def test_femnist_clients_are_writers_in_file_and_user_order(femnist):
    root, train, train2, test = femnist
    d = build_dataset({"name": "leaf", "task": "femnist", "path": str(root)}, seed=0)
    order = ["f_b", "f_a", "f_c"]          # file all_data_0 first, users in its own order
    allu = {**train, **train2}
    assert d.num_clients == 3 and d.num_classes == 62 and d.feature_shape == (1, 28, 28)
    for i, u in enumerate(order):
        x, y = d.client(i)
        np.testing.assert_array_equal(x.numpy().reshape(-1, 784),
                                      np.asarray(allu[u][0], dtype=np.float32))
        assert y.tolist() == allu[u][1]
        xt, yt = d.client(i, "test")
        np.testing.assert_array_equal(xt.numpy().reshape(-1, 784),
                                      np.asarray(test[u][0], dtype=np.float32))
        assert yt.tolist() == test[u][1]


def test_max_clients_keeps_the_first_users_and_their_test_rows(femnist):
    root = femnist[0]
    d = build_dataset({"name": "leaf", "task": "femnist", "path": str(root), "max_clients": 2}, 0)
    assert d.num_clients == 2 and d.counts.tolist() == [5, 3]
    assert sorted(d.client_test.tolist()) == [0, 1]


def lookup(c):
    """LEAF's character index, with 80 for a character outside the vocabulary."""
    i = SHAKESPEARE_VOCAB.find(c)
    return 80 if i < 0 else i


def test_shakespeare_vocabulary_is_leafs_80_characters():
    assert len(SHAKESPEARE_VOCAB) == 80 == len(set(SHAKESPEARE_VOCAB))
    assert list(SHAKESPEARE_VOCAB) == sorted(SHAKESPEARE_VOCAB)
    for c in "\n !\"&'(),-.:;>?[]}" + "0123456789" + "azAZ":
        assert c in SHAKESPEARE_VOCAB
    for c in "#$%*+/<=@\\^_`{|~\t":
        assert c not in SHAKESPEARE_VOCAB


def test_shakespeare_strings_become_character_indices(tmp_path):
    text = "O é{#}! To be, or not to be: that is the question.\nWhether 'tis nobler" * 3
    L = 10
    xs = [text[j:j + L] for j in range(12)]
    ys = [text[j + L] for j in range(12)]
    write_leaf(tmp_path, "train", "a.json", {"HAMLET": (xs[:9], ys[:9])})
    write_leaf(tmp_path, "test", "a.json", {"HAMLET": (xs[9:], ys[9:])})
    d = build_dataset({"name": "leaf", "task": "shakespeare", "path": str(tmp_path),
                       "seq_len": L}, 0)
    assert d.num_classes == 81 and d.feature_shape == (L,)
    expect = np.array([[lookup(c) for c in s] for s in xs], dtype=np.float32)
    np.testing.assert_array_equal(d.x.numpy(), expect[:9])
    np.testing.assert_array_equal(d.x_test.numpy(), expect[9:])
    assert d.y.tolist() + d.y_test.tolist() == [lookup(c) for c in ys]
    assert (d.x[0, 2:5] == 80).all()     # é, { and # are "unknown"


def test_sent140_vocabulary_by_train_frequency(tmp_path):
    rec = lambda text: ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "u", text]
    train = {"alice": ([rec("Good good movie"), rec("bad MOVIE !")], [1, 0]),
             "bob": (["movie night, don't"], [1])}            # a bare string is the text
    test = {"bob": ([rec("good bad unseen")], [0])}
    write_leaf(tmp_path, "train", "t.json", train)
    write_leaf(tmp_path, "test", "t.json", test)
    d = build_dataset({"name": "leaf", "task": "sent140", "path": str(tmp_path),
                       "vocab_size": 3, "max_words": 4}, 0)
    # train counts: movie 3, good 2, then 1 each: ! , bad don't night -> ties by code point
    good, movie, bang = 3, 2, 4             # 2 + rank: movie, good, '!'
    unk, pad = 1, 0
    assert d.x.tolist() == [[good, good, movie, pad], [unk, movie, bang, pad],
                            [movie, unk, unk, unk]]
    assert d.x_test.tolist() == [[good, unk, unk, pad]]
    assert d.num_classes == 2 and d.y.tolist() == [1, 0, 1] and d.client_test.tolist() == [1]


def test_validate_checks_the_folder_without_parsing(femnist, tmp_path_factory):
    root = femnist[0]
    cfg = {"data": {"name": "leaf", "task": "femnist", "path": str(root)},
           "model": {"name": "cnn"},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
           "client": {"local_steps": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}}}
    (root / "train" / "all_data_1.json").write_text("{ not parsed by validate")
    assert validate(cfg)["data"]["task"] == "femnist"
    empty = tmp_path_factory.mktemp("leaf_empty")
    write_leaf(empty, "train", "a.json", {})
    with pytest.raises(ConfigError, match=r"data.path: .* has no test/ folder .*train/ and test/"):
        validate({**cfg, "data": {**cfg["data"], "path": str(empty)}})
    with pytest.raises(ConfigError, match="data.task"):
        validate({**cfg, "data": {"name": "leaf", "path": str(root)}})


def good_femnist(rng):
    return {"u1": femnist_user(rng, 2)}


MALFORMED = {
    "not json": ("train", "{\"users\": [", r"not valid JSON \(line 1"),
    "no users": ("train", json.dumps({"user_data": {}}), r"not a LEAF file: .*\"users\""),
    "count": ("train", json.dumps({"users": ["w1"], "num_samples": [3],
                                   "user_data": {"w1": {"x": [[0.0] * 784], "y": [1]}}}),
              r"user 'w1': num_samples says 3 but x holds 1"),
    "x/y": ("train", json.dumps({"users": ["w1"],
                                 "user_data": {"w1": {"x": [[0.0] * 784], "y": [1, 2]}}}),
            r"user 'w1' has 1 x but 2 y"),
    "pixels": ("train", json.dumps({"users": ["w1"],
                                    "user_data": {"w1": {"x": [[0.0] * 783], "y": [1]}}}),
               r"femnist x must be a list of samples of 784 numbers"),
    "label": ("train", json.dumps({"users": ["w1"],
                                   "user_data": {"w1": {"x": [[0.0] * 784], "y": [62]}}}),
              r"femnist label 62 is not in 0..61"),
    "no user data": ("train", json.dumps({"users": ["w1", "w2"], "user_data": {"w1": {
        "x": [[0.0] * 784], "y": [1]}}}), r"user 'w2': user_data must hold"),
    "user split": ("test", json.dumps({"users": ["zz"], "user_data": {"zz": {
        "x": [[0.0] * 784], "y": [1]}}}), r"test user 'zz' has no train data: .*sample split"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_give_one_error_naming_the_file(tmp_path, case):
    split, text, match = MALFORMED[case]
    rng = np.random.default_rng(1)
    write_leaf(tmp_path, "train", "a.json", good_femnist(rng))
    write_leaf(tmp_path, "test", "a.json", good_femnist(rng))
    (tmp_path / split / "b.json").write_text(text)
    with pytest.raises(ConfigError, match=r"data.path: .*b.json.*|data.path: test user") as e:
        build_dataset({"name": "leaf", "task": "femnist", "path": str(tmp_path)}, 0)
    assert re.search(match, str(e.value)), str(e.value)


@pytest.mark.parametrize("x,y,match", [
    (["abc"], ["d"], "strings of data.seq_len=4 characters, found 3 characters"),
    ([["abcd"]], ["e"], "strings of data.seq_len=4 characters, found list"),
    (["abcd"], ["ef"], "single characters"),
])
def test_malformed_shakespeare_rows(tmp_path, x, y, match):
    write_leaf(tmp_path, "train", "a.json", {"u": (x, y)})
    write_leaf(tmp_path, "test", "a.json", {"u": (["wxyz"], ["."])})
    with pytest.raises(ConfigError, match=match):
        build_dataset({"name": "leaf", "task": "shakespeare", "path": str(tmp_path),
                       "seq_len": 4}, 0)


def test_duplicate_user_across_files_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    write_leaf(tmp_path, "train", "a.json", good_femnist(rng))
    write_leaf(tmp_path, "train", "b.json", good_femnist(rng))
    write_leaf(tmp_path, "test", "a.json", good_femnist(rng))
    with pytest.raises(ConfigError, match=r"b.json user 'u1' also appears in .*a.json"):
        build_dataset({"name": "leaf", "task": "femnist", "path": str(tmp_path)}, 0)


def test_missing_folder_and_missing_json_name_data_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data.path: no such folder: .*train/ and test/"):
        build_dataset({"name": "leaf", "task": "femnist", "path": str(tmp_path / "nope")}, 0)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(ConfigError, match=r"data.path: .*train holds no .json file"):
        build_dataset({"name": "leaf", "task": "femnist", "path": str(tmp_path)}, 0)


def test_sizes_are_bounded_by_free_memory_before_parsing(femnist, monkeypatch):
    root = femnist[0]
    biggest = max(p.stat().st_size for p in root.rglob("*.json"))
    monkeypatch.setattr("fedopt.data.files.available_memory_bytes", lambda d: 11 * biggest)
    with pytest.raises(ConfigError, match=r"data.path: parsing .*all_data_0.json .* needs about "
                                          r".* GiB, more than"):
        build_dataset({"name": "leaf", "task": "femnist", "path": str(root)}, 0)


def test_sent140_labels_bound_the_number_of_classes(tmp_path):
    """sent140's classes are max label + 1: a label of 10^9 would size a 10^9-row read-out
    layer, so it is refused like an npz file's inferred classes (MAX_INFERRED_CLASSES)."""
    from fedopt.data.arrays import MAX_INFERRED_CLASSES

    top = MAX_INFERRED_CLASSES
    write_leaf(tmp_path, "train", "t.json", {"a": (["good", "bad"], [0, top - 1])})
    write_leaf(tmp_path, "test", "t.json", {"a": (["good"], [1])})
    spec = {"name": "leaf", "task": "sent140", "path": str(tmp_path)}
    assert build_dataset(spec, 0).num_classes == top
    write_leaf(tmp_path, "test", "t.json", {"a": (["good"], [top])})
    with pytest.raises(ConfigError, match=rf"data.path: .*t.json user 'a': sent140 label {top} "
                                          rf"would make {top + 1:,} classes"):
        build_dataset(spec, 0)


def test_json_bound_covers_the_densest_objects():
    """json_bytes bounds what json builds from a file: containers are the densest (runs of
    one-item arrays nested 10 deep take ~41 bytes of Python objects per byte of text, so a
    bound of 12x the size alone was short), femnist's pixel floats take ~5."""
    import tracemalloc

    from fedopt.data.leaf import json_bytes

    for item in ("{}", "[]", "[{}]", "{\"\":{}}", "[" * 10 + "]" * 10,
                 "{\"\":" * 10 + "0" + "}" * 10, "0.5", "0.1234", "1000", "\"ab\"",
                 "\"\\u1234\"", "{\"k\":0,\"l\":1}"):
        text = "[" + ",".join([item] * 20_000) + "]"
        tracemalloc.start()
        doc = json.loads(text)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del doc
        containers = text.count("{") + text.count("[")
        assert peak <= json_bytes(len(text), containers), (item, peak / len(text))


def test_deeply_nested_json_is_one_error_naming_the_file(tmp_path):
    write_leaf(tmp_path, "test", "a.json", {})
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"data.path: .*train/a.json nests JSON deeper than"):
        build_dataset({"name": "leaf", "task": "femnist", "path": str(tmp_path)}, 0)
