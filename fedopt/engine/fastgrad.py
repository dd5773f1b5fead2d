"""Autograd's own kernels without autograd: the stacked logistic-regression gradient.

For C stacked linear models (W_c [k, d], b_c [k]), minibatches x [C, B, d] (any trailing input
shape, flattened), int64 labels t [C, B] and row weights wn [C, B], the local trainer's loss is

    ℓ_c = Σ_b wn_cb · CE(z_cb, t_cb),   z_c = x_c W_cᵀ + b_c,   CE(z, t) = −log softmax(z)_t

with logits z_cb ∈ R^k. With G_cb = ∂ℓ_c/∂z_cb = wn_cb (softmax(z_cb) − e_{t_cb}) [k]:

    ∇_{W_c} ℓ_c = G_cᵀ x_c  [k, d],      ∇_{b_c} ℓ_c = Σ_b G_cb  [k].

:func:`linear_cross_entropy_grad` issues exactly the ATen calls that
``torch.autograd.grad(Σ_c ℓ_c, (W, b))`` runs for the engine's graph (``baddbmm`` →
``_log_softmax`` → ``nll_loss_forward`` forward; ``nll_loss_backward`` →
``_log_softmax_backward_data`` → ``sum`` over the batch for the bias (autograd's ``sum_to``; no
sum when B = 1) and ``bmm(xᵀ, G)`` transposed for the weight), on the same inputs with the same
memory layouts, so its gradients and losses are bit for bit autograd's (same values, same
strides: the next step's ``baddbmm`` sees the same layout). What it saves is autograd's own work
(graph recording, the engine, the ones·wn chain of the sum/mul/view backward nodes): about a
quarter of the gradient's time for 100 clients of Synthetic(1,1) on CPU (0.58 vs 0.76 ms). It
re-derives no kernel: G by hand (softmax − one-hot) or ``bmm(Gᵀ, x)`` in place of the
transposed ``bmm(xᵀ, G)`` would be faster but round differently (float32: up to 1.2e-7).

:func:`eligible` says when a trainer may use it: the built-in :class:`LogisticRegression` (its
own ``batched_forward``, no buffers) with the built-in ``cross_entropy`` loss; :func:`applies`
checks one call's tensors (CPU, float32/float64 throughout, int64 class labels [C, B], plain
tensors outside any torch.func transform). Everything else takes the autograd path.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fedopt.engine.program import PerSample, cross_entropy
from fedopt.models.logreg import LogisticRegression

WEIGHT, BIAS = "linear.weight", "linear.bias"
_FLOATS = (torch.float32, torch.float64)
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def eligible(module: nn.Module, loss_fn: PerSample) -> bool:
    """Whether a trainer of ``module`` with per-sample loss ``loss_fn`` computes exactly the
    graph :func:`linear_cross_entropy_grad` reproduces: the built-in logistic regression (exact
    type, its class's ``batched_forward``, no buffers) and the built-in cross-entropy."""
    return (type(module) is LogisticRegression and "batched_forward" not in vars(module)
            and not any(True for _ in module.buffers()) and loss_fn is cross_entropy)


def applies(y: dict[str, Tensor], x: Tensor, t: Tensor, wn: Tensor) -> bool:
    """Whether this call's tensors fit :func:`linear_cross_entropy_grad`: parameters exactly
    ``linear.weight`` [C, k, d] and ``linear.bias`` [C, k], x [C, B, ...], labels int64 [C, B],
    weights [C, B], one float dtype (float32/float64) for x, W, b and wn, all on the CPU, no
    empty dimension, no tensor wrapped by a torch.func transform (vmap, grad) or a subclass, and
    autograd's anomaly detection off (it raises on NaN gradients, which this would not).
    CPU only: there autograd runs its backward kernels on the calling thread, as this does; on
    CUDA it runs them on its own device thread, whose cuBLAS handle and workspace could choose
    another GEMM algorithm, so equality there is not established."""
    if len(y) != 2 or torch.is_anomaly_enabled():   # anomaly mode checks backward outputs
        return False
    w, b = y.get(WEIGHT), y.get(BIAS)
    if w is None or b is None:
        return False
    ts = (w, b, x, t, wn)
    if any(type(v) is not Tensor or _wrapped(v) for v in ts):
        return False
    dt = w.dtype
    return (dt in _FLOATS and b.dtype == dt and x.dtype == dt and wn.dtype == dt
            and t.dtype == torch.int64 and w.ndim == 3 and b.ndim == 2 and x.ndim >= 3
            and t.ndim == 2 and wn.ndim == 2 and w.numel() > 0 and x.numel() > 0
            and t.shape == wn.shape == x.shape[:2] and b.shape == w.shape[:2]
            and w.shape[0] == x.shape[0]
            and w.device.type == "cpu"
            and w.device == b.device == x.device == t.device == wn.device)


def linear_cross_entropy_grad(y: dict[str, Tensor], x: Tensor, t: Tensor, wn: Tensor
                              ) -> tuple[dict[str, Tensor], Tensor]:
    """Per-client gradients {W: [C, k, d], b: [C, k]} and losses ℓ [C] (module docstring),
    bit for bit ``LocalTrainer``'s autograd result. Call only where :func:`applies` holds."""
    weight, bias = y[WEIGHT], y[BIAS]
    C, B = wn.shape
    with torch.no_grad():
        flat = x.reshape(C, B, -1)                                   # model's batched_forward
        z = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)).flatten(0, 1)
        logp = torch._log_softmax(z, 1, False)                       # cross_entropy(z, t)
        labels = t.flatten(0, 1)
        per, total_weight = torch.ops.aten.nll_loss_forward(logp, labels, None, 0, -100)
        loss = (per.view_as(wn) * wn).sum(1)
        # backward of Σ_c ℓ_c: SumBackward0/SumBackward1 hand MulBackward0 ones [C, B]
        grad_per = torch.ones((), dtype=wn.dtype, device=wn.device).expand(C, B) * wn
        # ViewBackward0 reshapes (a copy when wn, hence grad_per, is not contiguous)
        grad_logp = torch.ops.aten.nll_loss_backward(grad_per.reshape(-1), logp, labels, None,
                                                     0, -100, total_weight)
        grad_z = torch._log_softmax_backward_data(grad_logp, logp, 1, logp.dtype).view(C, B, -1)
        # BaddbmmBackward0: self's grad summed to bias.unsqueeze(1) [C, 1, k] (sum_to: no sum
        # when B = 1), mat2's grad bmm(mat1ᵀ, grad) transposed back to W's [C, k, d]
        grad_b = (grad_z.sum(1, keepdim=True) if B != 1 else grad_z).squeeze(1)
        grad_w = torch.bmm(flat.transpose(1, 2), grad_z).transpose(1, 2)
    grads = {WEIGHT: grad_w, BIAS: grad_b}
    return {k: grads[k] for k in y}, loss         # y's order, as autograd's dict(zip(y, ...))
