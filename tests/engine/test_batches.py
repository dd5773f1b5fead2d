"""The minibatch plan: epochs are permutations, partial last batches, executor independence."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedopt.engine.batches import (_plan_numpy, _plan_torch, local_step_counts,
                                  plan_batches)


def _offsets(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def test_each_epoch_visits_every_row_once():
    sizes = [3, 10, 27, 8]
    off = _offsets(sizes)
    B = 4
    steps = local_step_counts(np.array(sizes), B, None, 2)        # two epochs each
    assert steps.tolist() == [2 * -(-n // B) for n in sizes]
    plan = plan_batches(7, 0, np.arange(4), off, B, steps)
    rows, w, act = plan.rows.numpy(), plan.weight.numpy(), plan.active.numpy()
    for c, n in enumerate(sizes):
        per_epoch = -(-n // B)
        for e in range(2):
            ks = range(e * per_epoch, (e + 1) * per_epoch)
            seen = np.concatenate([rows[k, c][w[k, c] > 0] for k in ks])
            assert sorted(seen.tolist()) == list(range(off[c], off[c + 1]))
        assert act[:, c].sum() == steps[c]
        assert w[steps[c]:, c].sum() == 0                       # finished clients are masked
    assert plan.samples() == 2 * sum(sizes)


def test_epochs_are_reshuffled_and_seed_matters():
    off = _offsets([50])
    p = plan_batches(0, 0, np.array([0]), off, 50, np.array([2])).rows.numpy()
    assert sorted(p[0, 0]) == sorted(p[1, 0]) and not np.array_equal(p[0, 0], p[1, 0])
    q = plan_batches(1, 0, np.array([0]), off, 50, np.array([2])).rows.numpy()
    assert not np.array_equal(p, q)
    r = plan_batches(0, 1, np.array([0]), off, 50, np.array([2])).rows.numpy()
    assert not np.array_equal(p, r)


def test_client_plan_does_not_depend_on_its_chunk_neighbours():
    sizes = [5, 12, 30, 7, 19]
    off = _offsets(sizes)
    steps = np.full(5, 6)
    full = plan_batches(3, 4, np.arange(5), off, 4, steps)
    alone = plan_batches(3, 4, np.array([2]), off, 4, steps[:1])
    pair = plan_batches(3, 4, np.array([2, 4]), off, 4, steps[:2])
    assert np.array_equal(full.rows[:, 2].numpy(), alone.rows[:, 0].numpy())
    assert np.array_equal(full.rows[:, 4].numpy(), pair.rows[:, 1].numpy())
    assert np.array_equal(full.weight[:, 2].numpy(), alone.weight[:, 0].numpy())


def test_small_client_uses_all_rows_in_each_batch():
    off = _offsets([3])
    plan = plan_batches(0, 0, np.array([0]), off, 10, np.array([4]))
    assert plan.weight.sum(dim=-1).tolist() == [[3.0]] * 4


def test_step_count_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        local_step_counts(np.array([3]), 2, 5, 1)
    with pytest.raises(ValueError, match="without training rows"):
        plan_batches(0, 0, np.array([0]), np.array([0, 0]), 2, np.array([1]))


def test_batch_above_every_client_is_capped_at_the_largest_client():
    from fedopt.engine.batches import capped_batch_size

    sizes = np.array([3, 10, 7])
    assert capped_batch_size(10**8, sizes) == 10            # max n_i, by hand
    assert capped_batch_size(4, sizes) == 4                 # below it: untouched
    assert capped_batch_size(10, sizes) == 10
    with pytest.raises(ValueError, match="client.batch_size"):
        capped_batch_size(0, sizes)
    # B >= n_i for all i: one minibatch = the whole client per step, E steps per E epochs
    assert local_step_counts(sizes, 10, None, 3).tolist() == [3, 3, 3]
    assert local_step_counts(sizes, 10**8, None, 3).tolist() == [3, 3, 3]
    off = _offsets(sizes)
    steps = np.array([2, 2, 2])
    plan = plan_batches(5, 1, np.arange(3), off, 10, steps)
    for c, n in enumerate(sizes):                           # each step: all n_i rows, once
        for k in range(2):
            real = plan.rows[k, c][plan.weight[k, c] > 0].tolist()
            assert sorted(real) == list(range(off[c], off[c + 1]))


def test_plan_that_would_not_fit_in_memory_is_refused_before_allocating():
    from fedopt.engine.batches import plan_bytes

    assert plan_bytes(5, 2, 10**12) == 48 * 5 * 2 * 10**12
    with pytest.raises(ValueError, match=r"client.batch_size: a minibatch plan of 5 local steps "
                                         r"x 2 clients x batch 1000000000000"):
        plan_batches(0, 0, np.arange(2), _offsets([3, 4]), 10**12, np.array([5, 5]))


def test_auto_chunk_counts_the_plan_of_each_client(monkeypatch):
    import fedopt.engine.executor as executor_mod
    from fedopt.data import build_from_arrays
    from fedopt.engine.local import FunctionalModel, LocalTrainer
    from fedopt.models import build_model
    from fedopt.optim import from_config

    data = build_from_arrays(np.zeros((400, 5), np.float32), np.arange(400) % 3, 4, "iid",
                             seed=0, test_fraction=0.0)
    trainer = LocalTrainer(FunctionalModel(build_model({"name": "logreg"}, (5,), 3)),
                           from_config({"name": "sgd", "lr": 0.1}), seed=0)
    monkeypatch.setattr(executor_mod, "available_memory_bytes", lambda device: 4 * 10**9)
    params = {k: v.detach() for k, v in trainer.fmodel.module.named_parameters()}
    ex = executor_mod.VectorizedExecutor(data, trainer, batch_size=100, local_steps=10**4,
                                         local_epochs=None, seed=0)
    # plan: 48 B x 10^4 steps x 100 slots = 48 MB per client, the model state ~16 KB, so a
    # quarter of 4 GB holds floor(10^9 / (48e6 + ~16e3)) = 20 clients (4096 without the plan)
    assert ex._chunk(params) == 20
    ex = executor_mod.VectorizedExecutor(data, trainer, batch_size=100, local_steps=1,
                                         local_epochs=None, seed=0)
    assert ex._chunk(params) == 4096


def test_evaluation_chunks_hold_a_bounded_number_of_logits(monkeypatch):
    import torch

    import fedopt.engine.evaluate as evaluate_mod
    from fedopt.engine.local import FunctionalModel

    seen = []

    class Logits(torch.nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, classes))

        def forward(self, x):
            seen.append(x.shape[0])
            return x[:, :1] * self.w

    monkeypatch.setattr(evaluate_mod, "MAX_LOGITS", 1000)
    fm = FunctionalModel(Logits(300))
    params = dict(fm.module.named_parameters())
    x, y = torch.ones(10, 2), torch.zeros(10, dtype=torch.long)
    row = evaluate_mod.evaluate(fm, params, x, y, chunk_rows=8)
    loss, acc = row["loss"], row["accuracy"]
    # 1000 // 300 = 3 rows per chunk (after a 1-row probe): 3 + 3 + 3 + 1 rows
    assert seen == [1, 3, 3, 3, 1]
    # all logits 0: loss log(300) on every row, argmax picks class 0 = every label
    assert abs(loss - np.log(300)) < 1e-6 and acc == 1.0
    with pytest.raises(ValueError, match="chunk_rows"):
        evaluate_mod.evaluate(fm, params, x, y, chunk_rows=0)


def test_executor_from_config_caps_the_batch_at_the_largest_client():
    from fedopt.config import load_config
    from fedopt.data import build_from_arrays
    from fedopt.engine.executor import VectorizedExecutor
    from fedopt.engine.local import FunctionalModel, LocalTrainer
    from fedopt.models import build_model
    from fedopt.optim import from_config

    # 4 clients of 7 rows (28 rows, iid split, no test rows): n_max = 7
    data = build_from_arrays(np.zeros((28, 5), np.float32), np.arange(28) % 3, 4, "iid",
                             seed=0, test_fraction=0.0)
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"name": "logreg"},
                       "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
                       "client": {"batch_size": 10**8, "local_steps": 2}})
    trainer = LocalTrainer(FunctionalModel(build_model({"name": "logreg"}, (5,), 3)),
                           from_config({"name": "sgd", "lr": 0.1}), seed=0)
    assert VectorizedExecutor.from_config(cfg, data, trainer).batch_size == 7


# -- the device path of the plan (torch, used on a GPU) equals the host path bit for bit ---------
@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=12), batch=st.integers(1, 70),
       local_steps=st.integers(0, 9), per_client_key=st.booleans(), seed=st.integers(0, 2**40),
       data=st.data())
def test_torch_plan_equals_numpy_plan(counts, batch, local_steps, per_client_key, seed, data):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    C = len(counts)
    ids = np.asarray(data.draw(st.permutations(range(C))), dtype=np.int64)
    n = np.diff(offsets)[ids]
    per_epoch = -(-n // batch)
    steps = (np.full(C, local_steps, dtype=np.int64) if local_steps
             else 2 * per_epoch)                               # 0: epochs mode, E = 2
    epochs = np.maximum(-(-steps // per_epoch), 1)
    key = (np.asarray(data.draw(st.lists(st.integers(0, 10**6), min_size=C, max_size=C)),
                      dtype=np.int64) if per_client_key else 3)
    args = (seed, key, ids, offsets[ids], n, per_epoch, epochs, steps, int(steps.max()), batch,
            torch.device("cpu"))
    for a, b in zip(_plan_numpy(*args), _plan_torch(*args)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_plan_off_cuda_is_made_on_the_host(monkeypatch):
    """Only CUDA takes the torch path (checked there, bit for bit); any other device (MPS has
    no float64, which the torch path's weights are made in) gets the host plan, copied, with
    the weights cast to the requested dtype in the same call."""
    import fedopt.engine.batches as batches

    def refuse(*args):
        raise AssertionError("the torch path was taken off CUDA")

    monkeypatch.setattr(batches, "_plan_torch", refuse)
    off = _offsets([3, 5, 2])
    host = plan_batches(1, 4, np.arange(3), off, 2, np.array([3, 3, 3]))
    meta = plan_batches(1, 4, np.arange(3), off, 2, np.array([3, 3, 3]), device="meta",
                        dtype=torch.float32)
    for f in ("rows", "weight", "active", "steps"):
        a, b = getattr(host, f), getattr(meta, f)
        assert b.device.type == "meta" and a.shape == b.shape and a.dtype == b.dtype, f


def test_hessian_probes_off_cuda_are_drawn_on_the_host(monkeypatch):
    """Likewise the Hutchinson probes: the torch draws (float64) only on CUDA; a model on any
    other device (here the meta device) gets numpy's probes, copied in its own dtype."""
    import fedopt.engine.local as local
    from fedopt.engine.local import FunctionalModel, LocalTrainer
    from fedopt.models.logreg import LogisticRegression
    from fedopt.optim import from_config

    def refuse(*args, **kwargs):
        raise AssertionError("torch probes drawn off CUDA")

    monkeypatch.setattr(local, "keyed_rademacher_torch", refuse)
    monkeypatch.setattr(local, "keyed_normal_torch", refuse)
    model = LogisticRegression((5,), 3)
    trainer = LocalTrainer(FunctionalModel(model), from_config({"name": "sophia", "lr": 0.05}))
    C, B = 2, 4
    y = {k: torch.zeros((C,) + v.shape, device="meta") for k, v in model.named_parameters()}
    h = trainer._hessian(y, torch.zeros(C, B, 5, device="meta"),
                         torch.zeros(C, B, dtype=torch.int64, device="meta"),
                         torch.zeros(C, B, device="meta"), 3, np.arange(C), 0)
    assert {k: (v.shape, v.device.type) for k, v in h.items()} == \
        {k: (v.shape, "meta") for k, v in y.items()}
