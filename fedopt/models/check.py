"""What a model must satisfy to run in the vectorized client engine, checked up front.

The engine evaluates ``torch.func.functional_call(model, params, (x,))`` under
``vmap(grad(loss))`` with a leading client dimension on both the parameters and the data.
That needs a model whose output is a pure, deterministic function of (parameters, input):

* no BatchNorm / running statistics (buffers that ``forward`` updates): use GroupNorm/LayerNorm;
* no in-place operations on parameters, no ``.item()``/data-dependent Python control flow;
* no dropout or other randomness in ``forward`` (two calls give the same output);
* output ``[batch, num_classes]`` floating outputs (logits, or the regression targets' width)
  for input ``[batch, *input_shape]``;
* floating-point parameters, at least one of them trainable;
* a ``batched_forward(params, x)`` method, if present, equal to ``vmap(forward)``.

Constant buffers (never written in ``forward``) are allowed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedopt.models.shapes import normalize_input_shape
from fedopt.schema import ConfigError


def check_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise ValueError (naming ``model``) if ``model`` breaks a requirement above.

    Checked, in order: an ``nn.Module``; no layer keeping running statistics
    (``track_running_stats``, e.g. BatchNorm); at least one trainable parameter; every parameter
    floating point (named when not); two forwards on a batch of 16 rows, with the RNG seeded
    differently before each (so any randomness in ``forward`` shows), give equal floating
    ``[16, num_classes]`` logits and leave every buffer unchanged; one ``vmap(grad)`` over 2
    clients gives finite gradients of the parameters' shapes and leaves every buffer unchanged.
    All on the model's own device and dtype. Inputs come from a local generator, and the checks
    run inside ``torch.random.fork_rng``, so the caller's global RNG state is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    shape = normalize_input_shape(input_shape)
    for name, m in model.named_modules():
        if getattr(m, "track_running_stats", False):
            raise ConfigError(f"model: layer {name or '<root>'} ({type(m).__name__}) keeps running "
                              f"statistics; use GroupNorm/LayerNorm for federated training")
    params = dict(model.named_parameters())
    for k, p in params.items():
        if not p.dtype.is_floating_point:
            raise ConfigError(f"model: parameter {k!r} has dtype {p.dtype}; parameters must be "
                              f"floating point (store integer constants as buffers)")
    trainable = {k: p for k, p in params.items() if p.requires_grad}
    if not trainable:
        raise ConfigError("model has no trainable parameters (none with requires_grad=True)")
    first = next(iter(trainable.values()))
    device = first.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        _check_forward_and_grads(model, shape, num_classes, first.dtype, device, cuda)


def _reseed(seed: int, cuda: list[int]) -> None:
    torch.default_generator.manual_seed(seed)
    for i in cuda:
        torch.cuda.default_generators[i].manual_seed(seed)


def _check_forward_and_grads(model: nn.Module, shape: tuple[int, ...], num_classes: int,
                             dtype: torch.dtype, device: torch.device, cuda: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    rows = 16
    x = torch.randn((2, rows, *shape), generator=g).to(device, dtype)
    # the gradient check differentiates a fixed random linear functional of the outputs: any
    # loss the local program uses reaches the parameters through the same outputs (chain rule)
    y = torch.randn((2, rows, num_classes), generator=g).to(device, dtype)

    buffers_before = {k: b.clone() for k, b in model.named_buffers()}
    with torch.no_grad():
        _reseed(1, cuda)
        out1 = model(x[0])
        _reseed(2, cuda)
        out2 = model(x[0])
    if not isinstance(out1, Tensor) or tuple(out1.shape) != (rows, num_classes):
        got = tuple(out1.shape) if isinstance(out1, Tensor) else type(out1).__name__
        raise ConfigError(f"model: input [{rows}, {', '.join(map(str, shape))}] gave output "
                          f"{got}, expected ({rows}, {num_classes}) logits")
    if not out1.dtype.is_floating_point:
        raise ConfigError(f"model: output dtype {out1.dtype}; logits must be floating point")
    if not torch.equal(out1, out2):
        raise ConfigError("model: forward is not deterministic (dropout or other randomness?)")
    _check_buffers(model, buffers_before, "forward")
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    _check_vmap_grad(model, params, x, y)
    _check_buffers(model, buffers_before, "a vmap(grad(...)) training pass")


def _check_buffers(model: nn.Module, before: dict[str, Tensor], during: str) -> None:
    for k, b in model.named_buffers():
        if k not in before or b.shape != before[k].shape or not torch.equal(b, before[k]):
            raise ConfigError(f"model: buffer {k!r} changed during {during}; the client engine "
                              f"needs forward to be a pure function of parameters and input "
                              f"(a buffer written in training is never averaged across clients)")


def _check_vmap_grad(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> None:
    stacked = {k: torch.stack([p.detach(), p.detach()]) for k, p in params.items()}

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return (functional_call(model, p, (xb,)) * yb).sum()

    try:
        grads = vmap(grad(loss))(stacked, x, y)
    except Exception as e:  # report any functorch failure as a model problem
        raise ConfigError(f"model is not compatible with torch.func vmap(grad(...)) over "
                          f"clients: {type(e).__name__}: {e}") from e
    own = getattr(model, "batched_forward", None)
    if own is not None:   # the engine uses it in place of vmap(forward): they must agree
        with torch.no_grad():
            ref = vmap(lambda p, xb: functional_call(model, p, (xb,)))(stacked, x)
            try:
                got = own(stacked, x)
            except Exception as e:
                raise ConfigError(f"model: batched_forward(params, x) failed on stacked "
                                  f"parameters: {type(e).__name__}: {e}") from e
        if (not isinstance(got, Tensor) or got.shape != ref.shape
                or not torch.allclose(got, ref, rtol=1e-4, atol=1e-5)):
            raise ConfigError("model: batched_forward(params, x) does not match "
                              "vmap(forward) over the stacked clients")
    for k, gk in grads.items():
        if gk.shape != stacked[k].shape or not torch.isfinite(gk).all():
            raise ConfigError(f"model: per-client gradient of {k!r} is malformed or not finite")
