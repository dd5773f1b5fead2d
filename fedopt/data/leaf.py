"""LEAF benchmark data (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings") read
from the JSON files LEAF's preprocessing writes, with LEAF's natural clients (one per writer or
speaker or Twitter user).

``data.path`` is the folder holding ``train/`` and ``test/`` (in a LEAF checkout:
``data/<task>/data``), each with one or more ``.json`` files of the form::

    {"users": [u_1, u_2, ...], "num_samples": [n_1, n_2, ...],
     "user_data": {u_1: {"x": [...], "y": [...]}, ...}}

(``num_samples`` and LEAF's optional ``hierarchies`` may be absent; when ``num_samples`` is
there, ``n_j = len(x) = len(y)`` is checked). The test files must come from LEAF's *sample*
split (``--split-type sample``: every test user is also a train user), since fedopt evaluates
each client on its own held-out rows; a test user without train rows is refused.

Clients are the train users in order (files sorted by name, users in each file's ``users``
order); ``data.max_clients`` keeps the first ones. Per task (``data.task``), sample ``j`` of a
client becomes a row of the :class:`~fedopt.data.dataset.FederatedDataset`:

* ``femnist``: ``x`` is 784 pixel values (28×28, row-major, as LEAF stores them) → features
  ``[1, 28, 28]`` float32 as given; ``y`` an integer in ``0..61`` (10 digits, 26 upper-case,
  26 lower-case letters) → 62 classes.
* ``shakespeare``: ``x`` is a string of ``data.seq_len`` (LEAF: 80) characters, ``y`` the
  character that follows. Characters are indexed in LEAF's 80-character vocabulary
  (:data:`SHAKESPEARE_VOCAB`: newline, space, ``!"&'(),-.``, digits, ``:;>?``, ``A-Z``, ``[]``,
  ``a-z``, ``}`` in code-point order, so index ``v`` is the ``v``-th of them); any other
  character is index 80, "unknown" (LEAF's own lookup gives -1 there). Features: ``[seq_len]``
  character indices (stored as float32, exact below 2^24); labels in ``0..80`` → 81 classes,
  the input and output vocabulary of the ``char_rnn`` model.
* ``sent140``: ``x`` is LEAF's raw tweet record ``[id, date, query, user, text]`` (a bare
  string is taken as the text), ``y`` the sentiment ``0``/``1``. The text is lower-cased and
  split into words (runs of letters, digits, ``_`` and ``'``) and the marks ``. , ! ? ;``. The
  vocabulary is built from the train split of the kept clients: the ``data.vocab_size`` most
  frequent tokens (ties broken by the token's code points), index ``2 + rank``; index 0 pads
  and 1 is an unknown token. Features: the first ``data.max_words`` (LEAF: 25) token indices,
  padded with 0 → ``[max_words]`` float32 indices; classes ``max label + 1`` (at least 2,
  at most :data:`~fedopt.data.arrays.MAX_INFERRED_CLASSES`).
  For ``char_rnn`` set ``model.vocab_size: vocab_size + 2``. (LEAF itself maps words through
  pre-trained GloVe vectors, which fedopt does not download.)

Sizes are bounded before they are allocated: each JSON file is parsed only when ``12 ×`` its
size plus 200 bytes per ``{`` or ``[`` in it (the Python objects ``json`` builds: an empty
object or a one-item array costs far more than its two bytes of text) plus the rows decoded so
far fit in free memory (``fedopt validate`` checks ``12 ×`` the largest file's size), and
the final tensors are allocated only when their exact size (from the decoded row counts) fits.
Every error is one ConfigError naming ``data.path`` (and the file and user) or ``data.<key>``.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BeforeValidator, Field

from fedopt.data.arrays import MAX_INFERRED_CLASSES
from fedopt.data.assemble import assemble
from fedopt.data.dataset import FederatedDataset
from fedopt.data.files import check_fits, data_dir, regular_file
from fedopt.schema import Check, ConfigError, PositiveInt, Schema, Str, path_like

#: LEAF's Shakespeare characters, in code-point order (index = position)
SHAKESPEARE_VOCAB = ("\n " + "!\"&'(),-." + string.digits + ":;>?" + string.ascii_uppercase
                     + "[]" + string.ascii_lowercase + "}")
#: index of a character outside :data:`SHAKESPEARE_VOCAB`
SHAKESPEARE_UNKNOWN = len(SHAKESPEARE_VOCAB)
FEMNIST_CLASSES = 62
FEMNIST_SIDE = 28
#: sent140 token indices: padding and unknown (words start at 2)
PAD, UNKNOWN = 0, 1
#: a JSON file's Python objects take at most this many times its size (checked before parsing)
#: plus :data:`JSON_CONTAINER_BYTES` per object or array (numbers and strings: at most ~12 bytes
#: per byte of text; a dict or list: up to ~200 bytes, from 2 bytes of text)
JSON_EXPANSION = 12
JSON_CONTAINER_BYTES = 200
#: the largest ``data.max_words`` (a 280-character tweet has at most 280 tokens)
MAX_WORDS = 1000
LEAF_TASKS = ("femnist", "shakespeare", "sent140")
_TOKEN = re.compile(r"[\w']+|[.,!?;]")


class LeafData(Schema):
    """``data: {name: leaf, path: ..., task: ...}``: LEAF's JSON files (see the module doc)."""

    what = "data set 'leaf'"
    name: Literal["leaf"] = "leaf"
    path: Annotated[Str, BeforeValidator(path_like)] = Field(
        ..., description="the folder holding LEAF's train/ and test/ .json files")
    task: Literal["femnist", "shakespeare", "sent140"] = Field(
        ..., description="which LEAF data set the files hold (how x and y are read)")
    max_clients: Optional[PositiveInt] = Field(
        None, description="keep the first N train users (null: all)")
    seq_len: PositiveInt = Field(80, description="shakespeare: characters per x string")
    max_words: Annotated[PositiveInt, Check(lambda v: v <= MAX_WORDS, f"<= {MAX_WORDS}")] = Field(
        25, description="sent140: tokens kept per tweet")
    vocab_size: PositiveInt = Field(10_000, description="sent140: most frequent train tokens "
                                                        "kept (indices 2..vocab_size+1)")


def _expected(task: str | None = None) -> str:
    what = f"LEAF {task} data" if task else "LEAF data"
    return (f"a folder holding train/ and test/ with the .json files of {what} "
            f"(LEAF's data/<task>/data folder, sample split)")


@dataclass(frozen=True)
class LeafFiles:
    """The ``.json`` files of each split (sorted by name) and their sizes in bytes."""

    train: list[Path]
    test: list[Path]
    sizes: dict[Path, int]


def find_leaf_files(path: Any, task: str | None = None) -> LeafFiles:
    """The train and test ``.json`` files under ``path``; ConfigError naming ``data.path`` when
    the folder, ``train/`` or ``test/`` is missing or holds no ``.json`` file, or a file cannot
    be read, or when parsing the largest file could not fit in free memory. Cheap: nothing is
    parsed (``fedopt validate`` runs this)."""
    root = data_dir(path, _expected(task))
    found: dict[str, list[Path]] = {}
    sizes: dict[Path, int] = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise ConfigError(f"data.path: {root} has no {split}/ folder (expected "
                              f"{_expected(task)})")
        files = sorted(p for p in d.iterdir() if p.suffix == ".json")
        if not files:
            raise ConfigError(f"data.path: {d} holds no .json file (expected {_expected(task)})")
        for f in files:
            sizes[f] = regular_file(f, _expected(task))
        found[split] = files
    big = max(sizes, key=sizes.__getitem__)
    check_fits(JSON_EXPANSION * sizes[big], f"parsing {big} ({sizes[big]:,} bytes)")
    return LeafFiles(found["train"], found["test"], sizes)


def leaf_facts(task: str, seq_len: int = 80, max_words: int = 25) -> tuple[tuple[int, ...],
                                                                          int | None]:
    """``(feature_shape, num_classes)`` fixed by the task (None: known from the labels)."""
    if task == "femnist":
        return (1, FEMNIST_SIDE, FEMNIST_SIDE), FEMNIST_CLASSES
    if task == "shakespeare":
        return (seq_len,), SHAKESPEARE_UNKNOWN + 1
    return (max_words,), None


def leaf_token_vocab(task: str, vocab_size: int = 10_000) -> int | None:
    """Size of the index range of a task's features (Shakespeare: 81 characters with the
    unknown one; sent140: ``vocab_size + 2`` with padding and unknown); None for femnist."""
    return {"shakespeare": SHAKESPEARE_UNKNOWN + 1, "sent140": vocab_size + 2}.get(task)


@lru_cache(maxsize=1)
def _char_table() -> np.ndarray:
    """Code point → Shakespeare index, unknown characters → :data:`SHAKESPEARE_UNKNOWN`."""
    table = np.full(0x110000, SHAKESPEARE_UNKNOWN, dtype=np.int16)
    table[[ord(c) for c in SHAKESPEARE_VOCAB]] = np.arange(len(SHAKESPEARE_VOCAB))
    return table


def encode_chars(texts: list[str], length: int) -> np.ndarray:
    """``[len(texts), length]`` Shakespeare indices of strings that are each ``length`` long."""
    codes = np.array(texts, dtype=f"<U{length}").view(np.uint32).reshape(len(texts), length)
    return _char_table()[codes].astype(np.float32)


def tokenize(text: str) -> list[str]:
    """Lower-cased words (letters, digits, ``_``, ``'``) and the marks ``. , ! ? ;``."""
    return _TOKEN.findall(text.lower())


class _Reader:
    """Decodes one task's users; rows kept as per-user numpy arrays."""

    def __init__(self, task: str, seq_len: int, max_words: int) -> None:
        self.task, self.seq_len, self.max_words = task, seq_len, max_words
        self.token_ids: dict[str, int] = {}     # sent140: token -> provisional id
        self.token_counts: list[int] = []       # train occurrences per provisional id

    def row_bytes(self) -> int:
        shape, _ = leaf_facts(self.task, self.seq_len, self.max_words)
        return 4 * int(np.prod(shape)) + 8

    def user(self, xs: Any, ys: Any, where: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "femnist":
            return self._femnist(xs, ys, where)
        if self.task == "shakespeare":
            return self._shakespeare(xs, ys, where)
        return self._sent140(xs, ys, where, train)

    def _femnist(self, xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray]:
        side = FEMNIST_SIDE
        if not xs:
            return np.zeros((0, 1, side, side), np.float32), _labels(ys, where, None, "femnist")
        try:
            x = np.asarray(xs)
        except (ValueError, TypeError):
            x = np.asarray([], dtype=object)
        if x.dtype.kind not in "biuf" or x.ndim != 2 or x.shape[1] != side * side:
            raise ConfigError(f"data.path: {where}: femnist x must be a list of samples of "
                              f"{side * side} numbers (28x28 pixels) each")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ConfigError(f"data.path: {where}: femnist x contains NaN or inf values")
        return x.reshape(-1, 1, side, side), _labels(ys, where, FEMNIST_CLASSES, "femnist")

    def _shakespeare(self, xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray]:
        n = self.seq_len
        for s in xs:
            if not isinstance(s, str) or len(s) != n:
                got = f"{len(s)} characters" if isinstance(s, str) else type(s).__name__
                raise ConfigError(f"data.path: {where}: shakespeare x must hold strings of "
                                  f"data.seq_len={n} characters, found {got}")
        for c in ys:
            if not isinstance(c, str) or len(c) != 1:
                raise ConfigError(f"data.path: {where}: shakespeare y must hold single "
                                  f"characters (the next character), found {c!r:.40}")
        x = encode_chars(xs, n) if xs else np.zeros((0, n), np.float32)
        y = encode_chars(ys, 1)[:, 0].astype(np.int64) if ys else np.zeros(0, np.int64)
        return x, y

    def _sent140(self, xs: list, ys: list, where: str,
                 train: bool) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(xs), self.max_words), dtype=np.int64)   # provisional ids + 1
        for j, rec in enumerate(xs):
            text = rec if isinstance(rec, str) else (
                rec[4] if isinstance(rec, list) and len(rec) >= 5 else None)
            if not isinstance(text, str):
                raise ConfigError(f"data.path: {where}: sent140 x must hold LEAF tweet records "
                                  f"[id, date, query, user, text] (or the text), found "
                                  f"{rec!r:.60}")
            toks = tokenize(text)
            for t_pos, tok in enumerate(toks):
                k = self.token_ids.setdefault(tok, len(self.token_ids))
                if k == len(self.token_counts):
                    self.token_counts.append(0)
                if train:
                    self.token_counts[k] += 1
                if t_pos < self.max_words:
                    ids[j, t_pos] = k + 1
        return ids, _labels(ys, where, None, "sent140")

    def finish_sent140(self, xs: list[np.ndarray], vocab_size: int) -> list[np.ndarray]:
        """Provisional ids → final indices: the ``vocab_size`` most frequent train tokens get
        ``2 + rank`` (ties by token), other tokens ``UNKNOWN``, padding ``PAD``."""
        counts = np.asarray(self.token_counts, dtype=np.int64)
        tokens = sorted(self.token_ids, key=lambda t: (-counts[self.token_ids[t]], t))
        keep = [t for t in tokens[:vocab_size] if counts[self.token_ids[t]] > 0]
        remap = np.full(len(self.token_ids) + 1, UNKNOWN, dtype=np.int64)
        remap[0] = PAD
        for rank, tok in enumerate(keep):
            remap[self.token_ids[tok] + 1] = 2 + rank
        return [remap[x].astype(np.float32) for x in xs]


def _labels(ys: list, where: str, num_classes: int | None, task: str) -> np.ndarray:
    try:
        y = np.asarray(ys)
    except (ValueError, TypeError):
        y = np.asarray([], dtype=object)
    ok = y.ndim == 1 and (y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()))
    if not ok or (y.size and y.min() < 0):
        raise ConfigError(f"data.path: {where}: {task} y must hold non-negative integer labels")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise ConfigError(f"data.path: {where}: {task} label {int(y.max())} is not in "
                          f"0..{num_classes - 1}")
    if num_classes is None and y.size and y.max() >= MAX_INFERRED_CLASSES:
        raise ConfigError(f"data.path: {where}: {task} label {int(y.max())} would make "
                          f"{int(y.max()) + 1:,} classes (max label + 1), more than "
                          f"{MAX_INFERRED_CLASSES:,}")
    return y.astype(np.int64)


def json_bytes(size: int, containers: int) -> int:
    """Bound on the Python objects ``json`` builds from ``size`` bytes of text holding
    ``containers`` objects and arrays (see :data:`JSON_EXPANSION`)."""
    return JSON_EXPANSION * size + JSON_CONTAINER_BYTES * containers


def _load_json(f: Path, size: int, held: int) -> dict[str, Any]:
    where = f"beside the {held:,} bytes of rows already read"
    check_fits(json_bytes(size, 0) + held, f"parsing {f} ({size:,} bytes) {where}")
    try:
        raw = f.read_bytes()
        containers = raw.count(b"{") + raw.count(b"[")
        check_fits(json_bytes(size, containers) + held,
                   f"parsing {f} ({size:,} bytes, {containers:,} JSON objects and arrays) {where}")
        text = raw.decode("utf-8")
        del raw
        doc = json.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path: {f} is not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.path: {f} is not valid JSON (line {e.lineno}, column "
                          f"{e.colno}: {e.msg})") from None
    except RecursionError:
        raise ConfigError(f"data.path: {f} nests JSON deeper than Python's parser allows "
                          f"(LEAF files nest 4 levels)") from None
    except OSError as e:
        raise ConfigError(f"data.path: {f} cannot be read ({e.strerror})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), list) \
            or not isinstance(doc.get("user_data"), dict):
        raise ConfigError(f"data.path: {f} is not a LEAF file: expected a JSON object with "
                          f"\"users\" (a list) and \"user_data\" ({{user: {{\"x\": [...], "
                          f"\"y\": [...]}}}})")
    return doc


def _read_split(files: list[Path], sizes: dict[Path, int], reader: _Reader, train: bool,
                keep: set[str] | None, held: int) -> tuple[list[str], dict[str, tuple], list[str]]:
    """One split's files: its users in order, ``{user: (x, y)}`` of those in ``keep`` (all when
    None), and the users skipped for not being in ``keep``."""
    order: list[str] = []
    skipped: list[str] = []
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    where_of: dict[str, Path] = {}
    for f in files:
        doc = _load_json(f, sizes[f], held)
        users, data, counts = doc["users"], doc["user_data"], doc.get("num_samples")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
            raise ConfigError(f"data.path: {f}: \"num_samples\" must list one count per user "
                              f"({len(users)} users)")
        for i, u in enumerate(users):
            if not isinstance(u, str):
                raise ConfigError(f"data.path: {f}: user ids must be strings, found {u!r:.40}")
            where = f"{f} user {u!r}"
            if u in where_of:
                raise ConfigError(f"data.path: {where} also appears in {where_of[u]}")
            where_of[u] = f
            ud = data.get(u)
            if not isinstance(ud, dict) or not isinstance(ud.get("x"), list) \
                    or not isinstance(ud.get("y"), list):
                raise ConfigError(f"data.path: {where}: user_data must hold {{\"x\": [...], "
                                  f"\"y\": [...]}} for every user listed in \"users\"")
            xs, ys = ud["x"], ud["y"]
            if len(xs) != len(ys):
                raise ConfigError(f"data.path: {where} has {len(xs)} x but {len(ys)} y")
            if counts is not None and counts[i] != len(xs):
                raise ConfigError(f"data.path: {where}: num_samples says {counts[i]!r} but x "
                                  f"holds {len(xs)} samples")
            if keep is not None and u not in keep:
                skipped.append(u)
                continue
            x, y = reader.user(xs, ys, where, train)
            rows[u] = (x, y)
            order.append(u)
            held += x.nbytes + y.nbytes
        del doc
    return order, rows, skipped


def build_leaf(path: str | Path, seed: int = 0, *, task: str, max_clients: int | None = None,
               seq_len: int = 80, max_words: int = 25,
               vocab_size: int = 10_000) -> FederatedDataset:
    """The LEAF data set under ``path`` (see the module doc). ``seed`` is unused: LEAF's files
    fix the clients and the split. Train users without samples are not clients (a test sample
    of such a user is refused); ``max_clients`` keeps the first clients."""
    del seed
    if task not in LEAF_TASKS:
        raise ConfigError(f"data.task: must be one of {', '.join(LEAF_TASKS)}, got {task!r}")
    files = find_leaf_files(path, task)
    reader = _Reader(task, seq_len, max_words)
    order, train, _ = _read_split(files.train, files.sizes, reader, True, None, 0)
    users = [u for u in order if train[u][0].shape[0] > 0]
    if not users:
        raise ConfigError(f"data.path: the train files under {path} hold no samples "
                          f"(expected {_expected(task)})")
    users = users[:max_clients]
    index = {u: i for i, u in enumerate(users)}
    held = sum(train[u][0].nbytes + train[u][1].nbytes for u in users)
    test_order, test, skipped = _read_split(files.test, files.sizes, reader, False,
                                            set(index), held)
    for u in skipped:
        if u not in train:
            raise ConfigError(f"data.path: test user {u!r} has no train data: use LEAF's "
                              f"sample split (--split-type sample), where every test user is "
                              f"a train user")
        if train[u][0].shape[0] == 0:
            raise ConfigError(f"data.path: user {u!r} has test samples but no train samples; "
                              f"every client needs a train row")
    n = sum(train[u][0].shape[0] for u in users) + sum(test[u][0].shape[0] for u in test_order)
    check_fits(2 * reader.row_bytes() * n + held, f"the {n:,} rows under {path}")
    xs = [train[u][0] for u in users]
    xts = [test[u][0] for u in test_order]
    if task == "sent140":
        xs, xts = reader.finish_sent140(xs, vocab_size), reader.finish_sent140(xts, vocab_size)
    shape, classes = leaf_facts(task, seq_len, max_words)
    y = np.concatenate([train[u][1] for u in users])
    yt = np.concatenate([test[u][1] for u in test_order] + [np.zeros(0, np.int64)])
    if classes is None:
        classes = max(2, int(max(y.max(initial=0), yt.max(initial=0))) + 1)
    client = np.repeat(np.arange(len(users)), [train[u][0].shape[0] for u in users])
    client_test = np.repeat(np.array([index[u] for u in test_order], dtype=np.int64),
                            [test[u][0].shape[0] for u in test_order])
    x = np.concatenate(xs)
    xt = np.concatenate(xts + [np.zeros((0, *shape), np.float32)])
    return assemble(x, y, client, len(users), num_classes=classes, name=f"leaf:{task}",
                    x_test=xt, y_test=yt, client_test=client_test)
