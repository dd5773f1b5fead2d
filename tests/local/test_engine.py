"""Adaptive local training in the vectorized engine: the online stream reproduces the fixed plan,
features that are switched to a no-op reproduce plain training bit for bit, batched == per
client, batch sizes grow monotonically to the cap at equal samples."""
import numpy as np
import pytest
import torch
from torch import nn

from fedopt.engine.batches import BatchStream, plan_batches
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.local.batch_test import BatchSizeTest
from fedopt.local.config import Curriculum, LocalTraining
from fedopt.optim import make


def problem(clients=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = np.array([23, 9, 40, 17])[:clients]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = torch.randn(int(offsets[-1]), 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (int(offsets[-1]),), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    return FunctionalModel(model), x, y, offsets, start


def plan(offsets, ids, B, steps, key=3):
    return plan_batches(7, key, np.asarray(ids), offsets, B, np.asarray(steps),
                        dtype=torch.float64)


def test_stream_with_constant_batch_is_the_fixed_plan():
    _, _, _, offsets, _ = problem()
    p = plan(offsets, [0, 1, 2, 3], 4, [13, 5, 30, 2])
    s = BatchStream(p.source, dtype=torch.float64)
    for k in range(p.max_steps):
        rows, w, take = s.next(np.full(4, 4), 4)
        assert torch.equal(w, p.weight[k])
        real = p.weight[k] > 0
        assert torch.equal(rows[real], p.rows[k][real])
    assert not s.active.any()
    assert int(s.samples.sum()) == p.samples()


@pytest.mark.parametrize("opt", [make("sgd", lr=0.2), make("adam", lr=0.02)])
def test_switched_off_features_reproduce_plain_training_bit_for_bit(opt):
    fm, x, y, offsets, start = problem()
    p = plan(offsets, [0, 1, 2, 3], 4, [12, 6, 20, 3])
    plain = LocalTrainer(fm, opt).train(start, x, y, p, round_idx=3)
    never_grows = LocalTraining(batch_test=BatchSizeTest("norm", 0.1, max_batch_size=4),
                                lr_scaling="sqrt")
    full_pacing = LocalTraining(curriculum=Curriculum(order="random", b=1.0))
    anti_full = LocalTraining(curriculum=Curriculum(order="anti", b=1.0))
    for training in (never_grows, full_pacing, anti_full):
        got = LocalTrainer(fm, opt, LocalProgram(training=training)).train(start, x, y, p,
                                                                           round_idx=3)
        for k in start:
            assert torch.equal(got.params[k], plain.params[k]), training
        assert torch.equal(got.mean_loss, plain.mean_loss)
        assert got.samples == plain.samples and got.steps.tolist() == [12, 6, 20, 3]


def adaptive(**kw):
    return LocalTraining(batch_test=BatchSizeTest(kw.pop("test", "norm"), kw.pop("eta", 0.05),
                                                  max_batch_size=kw.pop("cap", 16)), **kw)


def test_batch_sizes_grow_to_the_cap_at_equal_samples_in_fewer_steps():
    fm, x, y, offsets, start = problem()
    p = plan(offsets, [0, 1, 2, 3], 2, [40, 20, 60, 30])
    res = LocalTrainer(fm, make("adagrad", lr=0.05), LocalProgram(training=adaptive())).train(
        start, x, y, p)
    assert res.samples == p.samples()
    assert (res.steps < p.steps.numpy()).all()
    counts = np.diff(offsets)
    assert (res.batch_size <= np.minimum(16, counts)).all() and (res.batch_size > 2).all()


def test_batch_sizes_never_shrink_within_a_job():
    fm, x, y, offsets, start = problem()
    seen = []
    real_next = BatchStream.next

    def spy(self, b, width):
        seen.append(np.array(b))
        return real_next(self, b, width)

    BatchStream.next = spy
    try:
        LocalTrainer(fm, make("adam", lr=0.05), LocalProgram(
            training=adaptive(test="inner_product", eta=0.3, cap=32))).train(
            start, x, y, plan(offsets, [0, 1, 2, 3], 2, [30, 30, 30, 30]))
    finally:
        BatchStream.next = real_next
    seen = np.stack(seen)
    assert (np.diff(seen, axis=0) >= 0).all() and seen.max() <= 32 and seen.max() > 2


@pytest.mark.parametrize("training", [
    adaptive(lr_scaling="sqrt"),
    adaptive(test="inner_product", eta=0.2, sso_steps=3, sso_eta=2.0),
    LocalTraining(curriculum=Curriculum(order="curriculum", a=0.5, b=0.3, min_prefix=4)),
    LocalTraining(curriculum=Curriculum(order="anti", score="local", pacing="sqrt",
                                        min_prefix=4), batch_test=BatchSizeTest("norm", 0.1)),
])
def test_batched_over_clients_equals_per_client_loops(training):
    fm, x, y, offsets, start = problem()
    steps = [16, 8, 25, 10]
    tr = LocalTrainer(fm, make("adam", lr=0.03), LocalProgram(prox_mu=0.1, training=training))
    together = tr.train(start, x, y, plan(offsets, [0, 1, 2, 3], 3, steps))
    for i in range(4):
        one = tr.train(start, x, y, plan(offsets, [i], 3, steps[i:i + 1]))
        assert one.steps[0] == together.steps[i] and one.batch_size[0] == together.batch_size[i]
        for k in start:
            torch.testing.assert_close(together.params[k][i], one.params[k][0], rtol=0,
                                       atol=1e-12)


def test_curriculum_prefix_visits_the_easiest_rows_first():
    fm, x, y, offsets, start = problem()
    from fedopt.local.engine import row_scores

    visited = []
    real_next = BatchStream.next

    def spy(self, b, width):
        rows, w, take = real_next(self, b, width)
        visited.append(rows[0, :int(take[0])].tolist())
        return rows, w, take

    BatchStream.next = spy
    try:
        cur = Curriculum(order="curriculum", a=1.0, b=0.25, min_prefix=1)
        LocalTrainer(fm, make("sgd", lr=0.0 + 1e-12), LocalProgram(
            training=LocalTraining(curriculum=cur))).train(
            start, x, y, plan(offsets, [2], 5, [8]))
    finally:
        BatchStream.next = real_next
    s = row_scores(LocalTrainer(fm, make("sgd", lr=0.1)), start, x, y, int(offsets[2]), 40)
    easiest = set((np.argsort(s)[:10] + offsets[2]).tolist())
    assert set(visited[0] + visited[1]) == easiest         # the first pass: g(0) = 10 rows


def test_lr_batch_scaling_cap_reaches_the_engine(monkeypatch):
    """lr(b) = min(max_lr, lr₀·(b/b₀)^½) per client at every step (direct formula on the
    recorded batch sizes), and a cap at lr₀ is the unscaled run."""
    from fedopt.local.lr_scaling import BatchScaledLR

    fm, x, y, offsets, start = problem()
    p = plan(offsets, [0, 1, 2, 3], 2, [40, 20, 60, 30])
    lr0, cap = 0.05, 0.08
    seen = []
    real_at = BatchScaledLR.at

    def spy(self, b):
        out = real_at(self, b)
        seen.append((b.cpu().numpy().copy(), torch.as_tensor(out.lr).cpu().numpy(), self.max_lr))
        return out

    monkeypatch.setattr(BatchScaledLR, "at", spy)
    test = BatchSizeTest("norm", 0.3, max_batch_size=24)

    def run(**kw):
        return LocalTrainer(fm, make("adagrad", lr=lr0), LocalProgram(
            training=LocalTraining(batch_test=test, **kw))).train(start, x, y, p)

    run(lr_scaling="sqrt", lr_max=cap)
    assert seen and all(m == cap for _, _, m in seen)
    b = np.concatenate([s[0] for s in seen])
    lr = np.concatenate([np.broadcast_to(s[1], s[0].shape) for s in seen])
    np.testing.assert_allclose(lr, np.minimum(cap, lr0 * np.sqrt(b / 2)), rtol=1e-12)
    assert (lr == cap).any() and (lr < cap).any()          # both sides of the cap were hit
    plain = run()
    at_lr0 = run(lr_scaling="sqrt", lr_max=lr0)
    uncapped = run(lr_scaling="sqrt")
    for k in start:
        torch.testing.assert_close(at_lr0.params[k], plain.params[k], rtol=0, atol=1e-12)
    assert any(not torch.allclose(uncapped.params[k], plain.params[k]) for k in start)


def test_curriculum_with_a_growing_batch_reaches_all_rows():
    """Pacing over the fixed plan's u_i steps never reaches g = n_i when the batch grows (the
    job ends in far fewer steps); paced over samples, the late passes cover every row."""
    fm, x, y, offsets, start = problem()
    passes = []
    real_next = BatchStream.next

    def spy(self, b, width):
        out = real_next(self, b, width)
        if self._pass[0] is not None:
            passes.append(len(self._pass[0]))
        return out

    BatchStream.next = spy
    try:
        cur = Curriculum(order="curriculum", a=0.5, b=0.2, min_prefix=1)
        res = LocalTrainer(fm, make("sgd", lr=0.05), LocalProgram(training=LocalTraining(
            curriculum=cur, batch_test=BatchSizeTest("norm", 0.05, max_batch_size=40)))).train(
            start, x, y, plan(offsets, [2], 2, [80]))          # n = 40 rows, 4 epochs of b₀ = 2
    finally:
        BatchStream.next = real_next
    assert res.steps[0] < 40                                   # the batch did grow
    assert passes[0] == 8 and max(passes) == 40                # g(0) = 0.2·40, then all rows
