"""Built-in models: shapes, sizes from the literature, vmap(grad) == per-client autograd, seeding."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedopt.models import MODEL_KEYS, build_model, resolve_model_spec

CASES = [
    ({"name": "logreg"}, (60,)),
    ({"name": "logreg"}, (1, 8, 8)),
    ({"name": "mlp", "hidden": [16, 8]}, (64,)),
    ({"name": "mlp", "hidden": []}, (5,)),
    ({"name": "cnn"}, (1, 8, 8)),
    ({"name": "cnn", "channels": [4, 6], "hidden": 12}, (1, 28, 28)),
    ({"name": "cnn", "channels": [3], "kernel_size": 3, "hidden": 5}, (3, 6, 10)),
]
IDS = [f"{s['name']}-{'x'.join(map(str, shp))}" for s, shp in CASES]


@pytest.mark.parametrize("spec,shape", CASES, ids=IDS)
def test_output_shapes_for_any_leading_dims(spec, shape):
    model = build_model(spec, shape, num_classes=7, seed=0)
    assert model(torch.randn(5, *shape)).shape == (5, 7)
    assert model(torch.randn(*shape)).shape == (7,)
    assert model(torch.randn(2, 3, *shape)).shape == (2, 3, 7)
    with pytest.raises(ValueError, match="model input has shape"):
        model(torch.randn(5, *shape[:-1], shape[-1] + 1))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_mcmahan_et_al():
    # "2NN" 784-200-200-10: 199,210 parameters; "CNN" on 28x28: 1,663,370 (McMahan et al. 2017)
    assert n_params(build_model({"name": "mlp"}, (784,), 10)) == 199_210
    assert n_params(build_model({"name": "cnn"}, (1, 28, 28), 10)) == 1_663_370
    assert n_params(build_model({"name": "logreg"}, (60,), 10)) == 61 * 10
    # digits CNN: 8x8 -> 4x4 -> 2x2, so the first FC layer has 64*2*2 inputs
    cnn8 = build_model({"name": "cnn"}, (1, 8, 8), 10)
    assert cnn8.fc.in_features == 256
    assert n_params(cnn8) == 832 + 51_264 + (256 * 512 + 512) + 5130


def per_client_loss(model):
    def loss(params, x, y):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    return loss


@pytest.mark.parametrize("spec,shape", CASES, ids=IDS)
def test_vmapped_per_client_grads_equal_autograd_loop(spec, shape):
    clients, batch, classes = 3, 4, 5
    model = build_model(spec, shape, classes, seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    base = {k: p.detach() for k, p in model.named_parameters()}
    # different parameters and different data on each client
    stacked = {k: p + 0.1 * torch.randn((clients, *p.shape), generator=g, dtype=p.dtype)
               for k, p in base.items()}
    x = torch.randn((clients, batch, *shape), generator=g, dtype=torch.float64)
    y = torch.randint(classes, (clients, batch), generator=g)

    vmapped = vmap(grad(per_client_loss(model)))(stacked, x, y)

    for c in range(clients):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(stacked[k][c])
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x[c]), y[c])
        loss.backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(vmapped[k][c], p.grad, rtol=1e-10, atol=1e-12)


def test_logreg_gradient_matches_closed_form():
    d, classes, batch = 6, 4, 9
    model = build_model({"name": "logreg"}, (d,), classes, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    params = {k: torch.randn((2, *p.shape), generator=g, dtype=torch.float64)
              for k, p in model.named_parameters()}
    x = torch.randn((2, batch, d), generator=g, dtype=torch.float64)
    y = torch.randint(classes, (2, batch), generator=g)
    grads = vmap(grad(per_client_loss(model)))(params, x, y)
    for c in range(2):
        W, b = params["linear.weight"][c], params["linear.bias"][c]
        # ∇_W = mean_r (softmax(W x_r + b) − e_{y_r}) x_rᵀ, ∇_b = mean_r (softmax − e_y)
        err = torch.softmax(x[c] @ W.T + b, dim=1) - nn.functional.one_hot(y[c], classes)
        torch.testing.assert_close(grads["linear.weight"][c], err.T @ x[c] / batch)
        torch.testing.assert_close(grads["linear.bias"][c], err.mean(0))


@pytest.mark.parametrize("spec,shape", CASES[::2], ids=IDS[::2])
def test_seeding_is_reproducible_and_leaves_global_rng_alone(spec, shape):
    state = torch.get_rng_state()
    a = build_model(spec, shape, 10, seed=3)
    b = build_model(spec, shape, 10, seed=3)
    c = build_model(spec, shape, 10, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa)
    # PyTorch's default init: weights and biases in ±1/sqrt(fan_in)
    for m in a.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bound = 1 / math.sqrt(m.weight[0].numel())
            assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound


def test_dtype_and_device_arguments():
    m = build_model({"name": "mlp", "hidden": [3]}, (4,), 2, seed=0, device="cpu",
                    dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    m32 = build_model({"name": "mlp", "hidden": [3]}, (4,), 2, seed=0)
    for p64, p32 in zip(m.parameters(), m32.parameters()):
        assert torch.equal(p64.float(), p32)  # same values whatever the dtype


def test_spec_errors_name_the_key():
    assert resolve_model_spec({"name": "mlp"}) == {"name": "mlp", "hidden": [200, 200]}
    assert set(MODEL_KEYS) == {"logreg", "mlp", "cnn", "char_rnn"}
    with pytest.raises(ValueError, match=r"model\.name"):
        build_model({"name": "resnet"}, (4,), 2)
    with pytest.raises(ValueError, match=r"model\.depth"):
        build_model({"name": "mlp", "depth": 3}, (4,), 2)
    with pytest.raises(ValueError, match=r"model\.hidden"):
        build_model({"name": "mlp", "hidden": 200}, (4,), 2)
    with pytest.raises(ValueError, match=r"model\.hidden\[1\]"):
        build_model({"name": "mlp", "hidden": [3, 0]}, (4,), 2)
    with pytest.raises(ValueError, match=r"model\.kernel_size"):
        build_model({"name": "cnn", "kernel_size": 4}, (1, 8, 8), 2)
    with pytest.raises(ValueError, match=r"data\.flatten"):
        build_model({"name": "cnn"}, (64,), 10)
    with pytest.raises(ValueError, match=r"model\.channels"):
        build_model({"name": "cnn", "channels": [4, 4, 4, 4]}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model({"name": "logreg"}, (0,), 10)
    with pytest.raises(ValueError, match="seed"):
        build_model({"name": "logreg"}, (3,), 10, seed=-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_vmap_grads_match_cpu():
    spec, shape = {"name": "cnn", "channels": [4, 8], "hidden": 16}, (1, 8, 8)
    cpu = build_model(spec, shape, 3, seed=0, dtype=torch.float64)
    gpu = build_model(spec, shape, 3, seed=0, dtype=torch.float64, device="cuda")
    g = torch.Generator().manual_seed(0)
    params = {k: torch.stack([p.detach()] * 2) for k, p in cpu.named_parameters()}
    x = torch.randn((2, 4, *shape), generator=g, dtype=torch.float64)
    y = torch.randint(3, (2, 4), generator=g)
    ref = vmap(grad(per_client_loss(cpu)))(params, x, y)
    out = vmap(grad(per_client_loss(gpu)))({k: v.cuda() for k, v in params.items()},
                                          x.cuda(), y.cuda())
    for k in ref:
        torch.testing.assert_close(out[k].cpu(), ref[k])


@pytest.mark.parametrize("spec, shape", [({"name": "logreg"}, (60,)),
                                         ({"name": "mlp", "hidden": [16, 8]}, (64,)),
                                         ({"name": "cnn", "channels": [4, 6], "hidden": 16}, (1, 8, 8))])
def test_batched_forward_equals_vmap_and_its_gradients_too(spec, shape):
    """The stacked-parameter forward (bmm / grouped conv) is the vmap forward, in value and
    in the autograd gradients the engine takes through it."""
    from torch.func import functional_call, vmap

    from fedopt.models import build_model

    C, B = 3, 5
    model = build_model(spec, shape, 10, seed=1).double()
    g = torch.Generator().manual_seed(0)
    params = {k: torch.randn((C,) + v.shape, generator=g, dtype=torch.float64, requires_grad=True)
              for k, v in model.named_parameters()}
    x = torch.randn((C, B) + shape, generator=g, dtype=torch.float64)
    ours = model.batched_forward(params, x)
    ref = vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((ours * w).sum(), list(params.values()))
    g2 = torch.autograd.grad((ref * w).sum(), list(params.values()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("C, B, c_in, H, W, c_out, k, pad", [(3, 4, 1, 8, 8, 6, 5, 2),
                                                            (2, 3, 4, 4, 4, 8, 3, 1),
                                                            (5, 2, 3, 7, 5, 2, 1, 0)])
def test_im2col_convolution_equals_the_grouped_convolution(C, B, c_in, H, W, c_out, k, pad):
    """The GPU's per-client convolution (unfold + bmm) is the CPU's grouped convolution, in value
    and in the gradients autograd takes through it (float64, to rounding)."""
    from fedopt.models import batched

    g = torch.Generator().manual_seed(0)
    x = torch.randn(C, B, c_in, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, c_out, c_in, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, c_out, generator=g, dtype=torch.float64, requires_grad=True)
    grouped, unfold = batched.conv2d_same(x, w, b, pad), batched.conv2d_unfold(x, w, b, pad)
    torch.testing.assert_close(unfold, grouped, rtol=1e-12, atol=1e-12)
    r = torch.randn(grouped.shape, generator=g, dtype=torch.float64)
    for a, u in zip(torch.autograd.grad((grouped * r).sum(), [x, w, b]),
                    torch.autograd.grad((unfold * r).sum(), [x, w, b])):
        torch.testing.assert_close(u, a, rtol=1e-12, atol=1e-12)
    # and against an independent per-client loop of torch's own conv2d
    for c in range(C):
        ref = torch.nn.functional.conv2d(x[c], w[c], b[c], padding=pad)
        torch.testing.assert_close(unfold[c], ref, rtol=1e-12, atol=1e-12)


def test_im2col_convolution_of_an_empty_batch():
    """B = 0 rows per client: the grouped convolution returns [C, 0, c_out, H', W']; so must
    the im2col product (no size may be left for reshape to infer from 0 elements)."""
    from fedopt.models import batched

    x = torch.zeros(3, 0, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 4, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)
    for bias in (b, None):
        assert batched.conv2d_unfold(x, w, bias, 1).shape == (3, 0, 4, 6, 6)
        assert batched.conv2d_same(x, w, bias, 1).shape == (3, 0, 4, 6, 6)
