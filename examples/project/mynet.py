"""The project's own model: a plain MLP whose width, depth and activation are its options.

dlx calls it with `input_shape` (one sample's shape) and `num_classes`, plus the options of
conf/model/mynet.yaml and the command line; its forward returns logits (batch, num_classes).
The signature is the one home of each option's default and range: dlx checks a value given on
the command line against it before any data loads.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated

from torch import nn

from dlx.options import Range


class Activation(str, Enum):
    relu = "relu"
    tanh = "tanh"
    gelu = "gelu"


LAYERS = {Activation.relu: nn.ReLU, Activation.tanh: nn.Tanh, Activation.gelu: nn.GELU}


class MyNet(nn.Module):
    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int,
                 hidden: Annotated[int, Range(ge=1)] = 32,
                 depth: Annotated[int, Range(ge=1)] = 2,
                 activation: Activation = Activation.relu):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), LAYERS[Activation(activation)]()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
