"""Building blocks shared by every model: the choices and ranges of the options they share, the input
contract (check_io), the check of a constructor's options, norms, activations and weight init.

The str-Enums below are the one home of each option's allowed names: the config schema, its checks,
`dlx train --help` and the constructors all read them from here. Messages use the config key
(``model.norm``, ...) the user would edit.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, TypeVar

from torch import nn

from dlx import options
from dlx.options import Range


class Norm(str, Enum):
    none = "none"
    batch = "batch"
    layer = "layer"
    group = "group"
    instance = "instance"  # needs feature maps: cnn and resnet


class Activation(str, Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    elu = "elu"
    selu = "selu"
    gelu = "gelu"
    sigmoid = "sigmoid"
    tanh = "tanh"


class Init(str, Enum):
    default = "default"  # PyTorch's own initialisation, untouched
    xavier_uniform = "xavier_uniform"
    xavier_normal = "xavier_normal"
    he_uniform = "he_uniform"
    he_normal = "he_normal"
    orthogonal = "orthogonal"


class Pool(str, Enum):
    max = "max"
    avg = "avg"
    none = "none"


# The ranges of the options every model shares, written once for all of them.
Width = Annotated[int, Range(ge=1)]
Dropout = Annotated[float, Range(ge=0, lt=1)]

LEAKY_SLOPE = 0.01

# The nonlinearity name (and parameter) torch.nn.init uses to derive a gain for each activation.
# gelu and elu behave like relu for positive inputs, which is where the variance argument of He et
# al. comes from, so they share relu's gain.
_GAIN_NONLINEARITY = {
    Activation.relu: ("relu", None),
    Activation.gelu: ("relu", None),
    Activation.elu: ("relu", None),
    Activation.leaky_relu: ("leaky_relu", LEAKY_SLOPE),
    Activation.tanh: ("tanh", None),
    Activation.sigmoid: ("sigmoid", None),
    Activation.selu: ("selu", None),
}

# Weighted layers the init schemes touch, and norms whose affine parameters they reset.
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
)

E = TypeVar("E", bound=Enum)


def member(kind: type[E], key: str, value) -> E:
    """The member of ``kind`` that ``value`` (a name or a member) names; otherwise raise naming ``key``."""
    try:
        return kind(choice(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValueError(f"{key}={value!r} is not valid: allowed {allowed}") from None


def choice(value):
    """The name a choice option holds, given a str or an Enum member (OmegaConf hands over members)."""
    return getattr(value, "value", value)


def check_io(input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """Check the two arguments dlx passes every model, built-in or the user's, and return the shape as a
    tuple of ints. ``input_shape`` is one sample's shape: (C, H, W) images, (C, L) sequences or (F,)
    features; a config hands it over as a list-like (OmegaConf's ListConfig)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
        raise ValueError(f"input_shape={input_shape!r} is not valid; it must be a non-empty sequence of sizes")
    try:
        # operator.index takes numpy's integers too, but not 2.5 or True
        shape = tuple(operator.index(s) for s in input_shape if not isinstance(s, bool))
    except TypeError:
        shape = ()
    if len(shape) != len(input_shape) or any(s < 1 for s in shape):
        raise ValueError(f"input_shape={tuple(input_shape)} is not valid; every size must be an integer >= 1")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not valid; it must be an integer >= 1")
    return shape


# The arguments dlx passes a model itself: they are not options a config sets.
# What the data tells a model that takes them (dlx.tasks): token inputs' id count, the kind of target and its length.
DATA_ARGUMENTS = ("vocab", "target", "target_len")
NOT_OPTIONS = (*inspect.signature(check_io).parameters, *DATA_ARGUMENTS)


# a model's __init__: its options checked against its signature and its option_problems (dlx.options)
checked_options = options.checked("model", skip=NOT_OPTIONS)


def spatial_input(model: str, input_shape: tuple[int, ...]) -> int:
    """Return the number of spatial dims (2 for (C,H,W), 1 for (C,L)) of a convolutional model's input."""
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"model '{model}' needs image (C,H,W) or sequence (C,L) inputs; the dataset gives samples "
            f"of shape {tuple(input_shape)}; use model=mlp"
        )
    return len(input_shape) - 1


def group_count(channels: int, *, min_group_size: int = 1) -> int:
    """The largest of 8, 4, 2, 1 groups that splits ``channels`` evenly into groups of at least
    ``min_group_size`` channels (1 group if none does)."""
    return next((g for g in (8, 4, 2) if channels % g == 0 and channels // g >= min_group_size), 1)


def make_norm(kind: Norm | str, channels: int, *, spatial_dims: int) -> nn.Module:
    """A normalisation layer over ``channels`` features.

    ``spatial_dims`` is 0 for plain feature vectors (N, F), 1 for sequences (N, C, L) and 2 for
    images (N, C, H, W).
    """
    kind = member(Norm, "model.norm", kind)
    if kind is Norm.none:
        return nn.Identity()
    if kind is Norm.batch:
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm1d(channels)
    if kind is Norm.layer:
        # On feature maps, one group over all channels normalises each sample over (C, *spatial),
        # which is layer norm without having to know the spatial size in advance.
        return nn.LayerNorm(channels) if spatial_dims == 0 else nn.GroupNorm(1, channels)
    if kind is Norm.group:
        # On feature vectors a one-channel group is a single value, which normalises to 0 and kills
        # the layer (e.g. width 8 in 8 groups); feature maps still have their spatial extent per group.
        min_group_size = 2 if spatial_dims == 0 else 1
        return nn.GroupNorm(group_count(channels, min_group_size=min_group_size), channels)
    # instance
    if spatial_dims == 0:
        raise ValueError(
            "model.norm=instance needs feature maps (N, C, ...); use norm=layer on feature vectors"
        )
    cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm1d
    return cls(channels, affine=True)


def make_activation(name: Activation | str) -> nn.Module:
    """A fresh activation module; each use gets its own so hooks can tell them apart."""
    name = member(Activation, "model.activation", name)
    if name is Activation.leaky_relu:
        return nn.LeakyReLU(negative_slope=LEAKY_SLOPE)
    return {
        Activation.relu: nn.ReLU,
        Activation.elu: nn.ELU,
        Activation.selu: nn.SELU,
        Activation.gelu: nn.GELU,
        Activation.sigmoid: nn.Sigmoid,
        Activation.tanh: nn.Tanh,
    }[name]()


def conv_class(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d for images, nn.Conv1d for sequences."""
    return nn.Conv2d if spatial_dims == 2 else nn.Conv1d


def init_gain(activation: Activation | str) -> float:
    """The gain torch.nn.init.calculate_gain gives for the nonlinearity matching ``activation``."""
    nonlinearity, param = _GAIN_NONLINEARITY[member(Activation, "model.activation", activation)]
    return nn.init.calculate_gain(nonlinearity, param)


def init_weights(model: nn.Module, *, init: Init | str, activation: Activation | str) -> None:
    """Re-initialise every Linear and Conv weight of ``model`` in place with scheme ``init``.

    "default" leaves PyTorch's own initialisation alone. Every other scheme also zeroes the biases
    and sets norm layers to the identity transform (weight 1, bias 0), so that a run's starting
    point depends on the scheme alone.
    """
    init = member(Init, "model.init", init)
    if init is Init.default:
        return
    nonlinearity, param = _GAIN_NONLINEARITY[member(Activation, "model.activation", activation)]
    a = 0.0 if param is None else param
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            weight = module.weight
            if init is Init.xavier_uniform:
                # Gain 1 as published by Glorot & Bengio: with relu this shrinks activations with
                # depth, which is exactly what the init study sets out to show.
                nn.init.xavier_uniform_(weight, gain=1.0)
            elif init is Init.xavier_normal:
                nn.init.xavier_normal_(weight, gain=1.0)
            elif init is Init.he_uniform:
                nn.init.kaiming_uniform_(weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
            elif init is Init.he_normal:
                nn.init.kaiming_normal_(weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
            else:
                nn.init.orthogonal_(weight, gain=nn.init.calculate_gain(nonlinearity, param))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORM_LAYERS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def conv_out_size(size: int, *, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one spatial dim (PyTorch's formula, dilation 1)."""
    return math.floor((size + 2 * padding - kernel_size) / stride) + 1
