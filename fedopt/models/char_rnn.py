"""A small recurrent model over token indices: embedding → one GRU layer → linear read-out of
the last hidden state. With LEAF's Shakespeare (:mod:`fedopt.data.leaf`) it predicts the next
character of an 80-character string (LEAF's own model is a 2-layer LSTM of 256 units with an
8-dimensional embedding; this one is smaller so it trains on CPUs).

Input ``x: [B, L]`` token indices (stored as floats, as every fedopt feature is; they must be
whole numbers in ``0..vocab_size-1``), output ``[B, num_classes]`` logits. With ``e_t = E[x_t]``
(``E ∈ R^{V×d}``) and ``h_0 = 0`` the GRU (Cho et al. 2014, the gate layout of
``torch.nn.GRU``) is, for ``t = 1..L``::

    r_t = σ(W_ir e_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz e_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in e_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

and the logits are ``W_o h_L + b_o``. ``W_i = [W_ir; W_iz; W_in] ∈ R^{3H×d}``,
``W_h ∈ R^{3H×H}``; initialised as ``torch.nn.GRU`` (``U(−1/√H, 1/√H)``), the embedding
``N(0, 1)`` and the read-out as ``nn.Linear``.

The recurrence is written once for ``C`` stacked clients (:meth:`CharRNN.batched_forward`,
``baddbmm`` per time step, as the other built-in models in :mod:`fedopt.models.batched`);
:meth:`CharRNN.forward` is the same code with ``C = 1``, so the vectorized engine's batched
path and ``vmap(forward)`` compute the same numbers. No dropout, no running statistics.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedopt.models import batched
from fedopt.models.shapes import normalize_input_shape, split_lead
from fedopt.schema import ConfigError


class _Activations(nn.Module):
    """Identity. The sequence-long intermediates pass through it so that the engine's
    activation probe (forward hooks on every module's output, see
    :func:`fedopt.engine.evaluate.chunk_rows_for`) counts them: ``L·(d + 3H)`` entries per row,
    which sizes the evaluation chunks (without it a chunk of 2^24 / classes rows would hold
    ``[rows, L, 3H]`` input projections, gigabytes for Shakespeare's test set)."""

    def forward(self, t: Tensor) -> Tensor:
        return t


class CharRNN(nn.Module):
    """Embedding(``vocab_size``, ``embed_dim``) → GRU(``hidden``) → Linear(``hidden``,
    ``num_classes``); ``vocab_size`` None means ``num_classes`` (characters in, next character
    out)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 vocab_size: int | None = None, embed_dim: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.input_shape = normalize_input_shape(input_shape)
        if len(self.input_shape) != 1:
            raise ConfigError(f"model.name=char_rnn needs sequences of token indices, input "
                              f"shape (length,); got {self.input_shape}")
        self.vocab_size = int(vocab_size if vocab_size is not None else num_classes)
        self.hidden = int(hidden)
        bound = 1.0 / math.sqrt(self.hidden)
        self.embed = nn.Parameter(torch.randn(self.vocab_size, embed_dim))
        self.w_ih = nn.Parameter(torch.empty(3 * hidden, embed_dim).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(3 * hidden, hidden).uniform_(-bound, bound))
        self.b_ih = nn.Parameter(torch.empty(3 * hidden).uniform_(-bound, bound))
        self.b_hh = nn.Parameter(torch.empty(3 * hidden).uniform_(-bound, bound))
        self.out = nn.Linear(hidden, num_classes)
        self.activations = _Activations()

    def forward(self, x: Tensor) -> Tensor:
        lead, flat = split_lead(x, self.input_shape)
        params = {k: p.unsqueeze(0) for k, p in self.named_parameters()}
        return self.batched_forward(params, flat.unsqueeze(0))[0].reshape(*lead, -1)

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """C stacked models on x [C, B, L] (see :mod:`fedopt.models.batched`): [C, B, classes]."""
        C, B, L = x.shape
        H = self.hidden
        table = params["embed"]                                  # [C, V, d]
        idx = x.to(torch.int64).reshape(C, B * L, 1).expand(C, B * L, table.shape[-1])
        e = self.activations(torch.gather(table, 1, idx))       # [C, B·L, d]
        gi = self.activations(
            batched.linear(e, params["w_ih"], params["b_ih"]).reshape(C, B, L, 3 * H))
        h = x.new_zeros((C, B, H), dtype=table.dtype)
        for t in range(L):
            gh = batched.linear(h, params["w_hh"], params["b_hh"])  # [C, B, 3H]
            i_r, i_z, i_n = gi[:, :, t].chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
        return batched.linear(h, params["out.weight"], params["out.bias"])


def check_token_vocab(model: dict, num_classes: int | None, token_vocab: int) -> None:
    """ConfigError naming ``model.vocab_size`` when a resolved ``char_rnn`` spec's vocabulary
    (``vocab_size``, default ``num_classes``) is smaller than the data's token index range
    ``token_vocab`` (an index beyond the embedding would fail mid-run); other models pass."""
    if model.get("name") != "char_rnn":
        return
    vocab = model.get("vocab_size") or num_classes
    if vocab is None or vocab < token_vocab:
        raise ConfigError(f"model.vocab_size: the data's token indices run to {token_vocab - 1} "
                          f"but char_rnn's embedding has {vocab} rows; set model.vocab_size: "
                          f"{token_vocab} (LEAF sent140: data.vocab_size + 2)")
