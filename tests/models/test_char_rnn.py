"""The char_rnn model: its stacked-client GRU against torch.nn.GRU run client by client
(outputs and gradients), its config, and a short federated run on generated LEAF Shakespeare
files that learns."""
import json

import pytest
import torch
from torch import nn

import fedopt
from fedopt.config import validate
from fedopt.models import build_model
from fedopt.schema import ConfigError


def reference(params, vocab, embed, hidden, classes):
    """Embedding + torch.nn.GRU + Linear holding one client's parameters."""
    emb, gru, out = nn.Embedding(vocab, embed), nn.GRU(embed, hidden, batch_first=True), \
        nn.Linear(hidden, classes)
    with torch.no_grad():
        emb.weight.copy_(params["embed"])
        gru.weight_ih_l0.copy_(params["w_ih"])
        gru.weight_hh_l0.copy_(params["w_hh"])
        gru.bias_ih_l0.copy_(params["b_ih"])
        gru.bias_hh_l0.copy_(params["b_hh"])
        out.weight.copy_(params["out.weight"])
        out.bias.copy_(params["out.bias"])

    def forward(x):
        _, h = gru(emb(x.long()))
        return out(h[-1])
    return forward, [emb.weight, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                     gru.bias_hh_l0, out.weight, out.bias]


NAMES = ["embed", "w_ih", "w_hh", "b_ih", "b_hh", "out.weight", "out.bias"]


def test_stacked_clients_match_torch_gru_per_client():
    C, B, L, V, K = 3, 5, 7, 11, 4
    model = build_model({"name": "char_rnn", "vocab_size": V, "embed_dim": 3, "hidden": 6},
                        (L,), K, seed=0)
    g = torch.Generator().manual_seed(0)
    stacked = {k: (p.detach() + 0.3 * torch.randn((C, *p.shape), generator=g)).requires_grad_()
               for k, p in model.named_parameters()}
    x = torch.randint(0, V, (C, B, L), generator=g).float()
    y = torch.randint(0, K, (C, B), generator=g)
    out = model.batched_forward(stacked, x)
    loss = nn.functional.cross_entropy(out.reshape(C * B, K), y.reshape(-1), reduction="sum")
    grads = torch.autograd.grad(loss, [stacked[k] for k in NAMES])
    for c in range(C):
        fwd, leaves = reference({k: v[c].detach() for k, v in stacked.items()}, V, 3, 6, K)
        ref = fwd(x[c])
        torch.testing.assert_close(out[c], ref, rtol=1e-5, atol=1e-6)
        ref_grads = torch.autograd.grad(
            nn.functional.cross_entropy(ref, y[c], reduction="sum"), leaves)
        for name, got, want in zip(NAMES, grads, ref_grads):
            torch.testing.assert_close(got[c], want, rtol=1e-4, atol=1e-6, msg=name)
    # the single-model forward is the same network, for any leading dims
    torch.testing.assert_close(model(x[0]), reference(
        {k: p.detach() for k, p in model.named_parameters()}, V, 3, 6, K)[0](x[0]))
    assert model(x).shape == (C, B, K) and model(x[0, 0]).shape == (K,)


def test_config_and_shape_errors():
    m = build_model({"name": "char_rnn"}, (80,), 81, seed=0)
    assert m.vocab_size == 81 and m.hidden == 64 and m.embed.shape == (81, 8)
    with pytest.raises(ConfigError, match=r"char_rnn needs sequences of token indices"):
        build_model({"name": "char_rnn"}, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"model.hidden"):
        build_model({"name": "char_rnn", "hidden": 0}, (80,), 81)


def write_shakespeare(root, speakers=6, seq_len=12, samples=60, test=15):
    """LEAF Shakespeare files of a repetitive play: each speaker repeats its own line."""
    lines = ["to be or not to be, that is the question. ",
             "all the world's a stage. ", "now is the winter of our discontent. ",
             "a horse! a horse! my kingdom for a horse! ", "the lady doth protest too much. ",
             "brevity is the soul of wit. "]
    for split, lo, n in (("train", 0, samples), ("test", samples, test)):
        users, data = [], {}
        for s in range(speakers):
            text = lines[s % len(lines)] * 40
            u = f"PLAY_SPEAKER{s}"
            users.append(u)
            data[u] = {"x": [text[j:j + seq_len] for j in range(lo, lo + n)],
                       "y": [text[j + seq_len] for j in range(lo, lo + n)]}
        (root / split).mkdir()
        (root / split / "all_data_niid_0_keep_0_train_9.json").write_text(json.dumps(
            {"users": users, "num_samples": [n] * speakers, "user_data": data}))


@pytest.mark.slow
def test_short_federated_run_on_shakespeare_learns(tmp_path):
    write_shakespeare(tmp_path)
    cfg = {"seed": 0, "data": {"name": "leaf", "task": "shakespeare", "path": str(tmp_path),
                               "seq_len": 12},
           "model": {"name": "char_rnn", "hidden": 32},
           "algorithm": {"name": "fedavg", "rounds": 20, "clients_per_round": 3},
           "client": {"local_steps": 10, "batch_size": 16,
                      "optimizer": {"name": "adam", "lr": 0.02}},
           "executor": {"name": "local", "device": "cpu"}, "eval_every": 1}
    r = fedopt.run(cfg, progress=False)
    first, last = r.metrics[0], r.metrics[-1]
    # chance over the 81 classes is log(81) = 4.39; the lines are fully predictable
    assert last["test_loss"] < 0.5 * first["test_loss"], (first, last)
    assert last["test_accuracy"] > 0.6, last
    print(f"char_rnn shakespeare: test loss {first['test_loss']:.3f} -> {last['test_loss']:.3f}, "
          f"accuracy {first['test_accuracy']:.3f} -> {last['test_accuracy']:.3f}")


def test_validate_asks_for_a_vocabulary_covering_sent140_tokens(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "d.json").write_text(json.dumps(
            {"users": ["u"], "user_data": {"u": {"x": ["good day", "bad day"], "y": [1, 0]}}}))
    cfg = {"data": {"name": "leaf", "task": "sent140", "path": str(tmp_path), "vocab_size": 50},
           "model": {"name": "char_rnn"},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 1},
           "client": {"local_steps": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}}}
    with pytest.raises(ConfigError, match=r"model.vocab_size: .* run to 51 .* set "
                                          r"model.vocab_size: 52"):
        validate(cfg)
    cfg["model"]["vocab_size"] = 52
    assert validate(cfg)["model"]["vocab_size"] == 52
    r = fedopt.run({**cfg, "eval_every": 1}, progress=False)   # and it runs
    assert r.metrics[-1]["round"] == 1


def test_evaluation_chunks_count_the_sequence_long_intermediates():
    from fedopt.engine.evaluate import MAX_ACTIVATIONS, chunk_rows_for
    from fedopt.engine.local import FunctionalModel

    L, d, H = 80, 8, 64
    model = build_model({"name": "char_rnn", "embed_dim": d, "hidden": H}, (L,), 81, seed=0)
    params = {k: p.detach() for k, p in model.named_parameters()}
    rows = chunk_rows_for(FunctionalModel(model), params, torch.zeros(10**6, L))
    # each row holds L·d embeddings and L·3H input projections at once
    assert rows <= MAX_ACTIVATIONS // (L * (d + 3 * H))
