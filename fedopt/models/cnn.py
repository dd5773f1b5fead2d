"""Small FEMNIST/MNIST-style CNN (McMahan et al. 2017's "CNN").

For input ``(c, H, W)`` and ``channels=[32, 64]``, ``kernel_size=5``, ``hidden=512``::

    conv 5x5, 32 ch, padding 2 ("same") → ReLU → maxpool 2x2   (H, W) → (⌊H/2⌋, ⌊W/2⌋)
    conv 5x5, 64 ch, padding 2          → ReLU → maxpool 2x2   → (⌊H/4⌋, ⌊W/4⌋)
    flatten → Linear(64·⌊H/4⌋·⌊W/4⌋, 512) → ReLU → Linear(512, C)

"Same" padding keeps the spatial size through each convolution, so only the pools shrink it:
8x8 digits end at 2x2 (256 features), 28x28 MNIST/FEMNIST at 7x7 (3136 features; with 10 classes
that is the paper's 1,663,370 parameters). Needs ``H, W >= 2^len(channels)``. No BatchNorm, no
dropout: the network is a pure function of its parameters, as ``vmap`` over clients needs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from fedopt.models import batched
from fedopt.models.shapes import normalize_input_shape, split_lead
from fedopt.schema import ConfigError


class CNN(nn.Module):
    """``len(channels)`` blocks of conv(``kernel_size``, same padding) → ReLU → maxpool 2, then
    one hidden fully connected layer of width ``hidden`` and the linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 channels: Sequence[int] = (32, 64), kernel_size: int = 5,
                 hidden: int = 512) -> None:
        super().__init__()
        self.input_shape = normalize_input_shape(input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"model.name=cnn needs images of shape (channels, height, width), got input "
                f"shape {self.input_shape} (for digits set data.flatten: false)")
        c, h, w = self.input_shape
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size must be a positive odd int, got {kernel_size!r}")
        shrink = 2 ** len(channels)
        if h < shrink or w < shrink:
            raise ConfigError(f"model.channels: {len(channels)} pooling stages need images of at "
                              f"least {shrink}x{shrink}, got {h}x{w}")
        convs = []
        for c_in, c_out in zip([c, *channels[:-1]], channels):
            convs.append(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2))
        self.convs = nn.ModuleList(convs)
        flat = channels[-1] * (h // shrink) * (w // shrink)
        self.fc = nn.Linear(flat, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        lead, z = split_lead(x, self.input_shape)
        for conv in self.convs:
            z = torch.max_pool2d(torch.relu(conv(z)), 2)
        z = torch.relu(self.fc(z.flatten(1)))
        return self.out(z).reshape(*lead, -1)

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """C stacked models on x [C, B, c, h, w] (see :mod:`fedopt.models.batched`)."""
        C, B = x.shape[:2]
        z = x
        for i, conv in enumerate(self.convs):
            z = batched.conv2d_same(z, params[f"convs.{i}.weight"], params[f"convs.{i}.bias"],
                                    conv.padding[0])
            z = torch.max_pool2d(torch.relu(z.flatten(0, 1)), 2)
            z = z.reshape(C, B, *z.shape[1:])
        z = torch.relu(batched.linear(z.flatten(2), params["fc.weight"], params["fc.bias"]))
        return batched.linear(z, params["out.weight"], params["out.bias"])
