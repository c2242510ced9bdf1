"""Building blocks shared by every model: option checks, norms, activations, weight init.

Every model takes the same knobs (norm, activation, dropout, init), so they are validated and
built here once; error messages use the config key (``model.norm``, ...) the user would edit.
"""

from __future__ import annotations

import math

from torch import nn

NORMS = ("none", "batch", "layer", "group", "instance")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "tanh")
INITS = ("default", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "orthogonal")

LEAKY_SLOPE = 0.01

# The nonlinearity name (and parameter) torch.nn.init uses to derive a gain for each activation.
# gelu and elu behave like relu for positive inputs, which is where the variance argument of He et
# al. comes from, so they share relu's gain.
_GAIN_NONLINEARITY = {
    "relu": ("relu", None),
    "gelu": ("relu", None),
    "elu": ("relu", None),
    "leaky_relu": ("leaky_relu", LEAKY_SLOPE),
    "tanh": ("tanh", None),
    "sigmoid": ("sigmoid", None),
    "selu": ("selu", None),
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


def check_choice(key: str, value, valid: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise naming ``key`` and the choices."""
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    return value


def check_int(key: str, value, *, minimum: int) -> int:
    """Return ``value`` if it is an integer of at least ``minimum``; otherwise raise naming ``key``."""
    # bool is an int subclass, but `width: true` in a config is a mistake, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}={value!r} is not valid; it must be an integer >= {minimum}")
    return value


def check_dropout(value) -> float:
    """Return the dropout probability if it lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"model.dropout={value!r} is not valid; it must be a number in [0, 1)")
    return float(value)


def check_common(*, norm: str, activation: str, dropout: float, init: str) -> float:
    """Validate the knobs every model shares; return dropout as a float."""
    check_choice("model.norm", norm, NORMS)
    check_choice("model.activation", activation, ACTIVATIONS)
    check_choice("model.init", init, INITS)
    return check_dropout(dropout)


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


def make_norm(kind: str, channels: int, *, spatial_dims: int) -> nn.Module:
    """A normalisation layer over ``channels`` features.

    ``spatial_dims`` is 0 for plain feature vectors (N, F), 1 for sequences (N, C, L) and 2 for
    images (N, C, H, W).
    """
    check_choice("model.norm", kind, NORMS)
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm1d(channels)
    if kind == "layer":
        # On feature maps, one group over all channels normalises each sample over (C, *spatial),
        # which is layer norm without having to know the spatial size in advance.
        return nn.LayerNorm(channels) if spatial_dims == 0 else nn.GroupNorm(1, channels)
    if kind == "group":
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


def make_activation(name: str) -> nn.Module:
    """A fresh activation module; each use gets its own so hooks can tell them apart."""
    check_choice("model.activation", name, ACTIVATIONS)
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=LEAKY_SLOPE)
    if name == "elu":
        return nn.ELU()
    if name == "selu":
        return nn.SELU()
    if name == "gelu":
        return nn.GELU()
    if name == "sigmoid":
        return nn.Sigmoid()
    return nn.Tanh()


def conv_class(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d for images, nn.Conv1d for sequences."""
    return nn.Conv2d if spatial_dims == 2 else nn.Conv1d


def init_gain(activation: str) -> float:
    """The gain torch.nn.init.calculate_gain gives for the nonlinearity matching ``activation``."""
    nonlinearity, param = _GAIN_NONLINEARITY[check_choice("model.activation", activation, ACTIVATIONS)]
    return nn.init.calculate_gain(nonlinearity, param)


def init_weights(model: nn.Module, *, init: str, activation: str) -> None:
    """Re-initialise every Linear and Conv weight of ``model`` in place with scheme ``init``.

    "default" leaves PyTorch's own initialisation alone. Every other scheme also zeroes the biases
    and sets norm layers to the identity transform (weight 1, bias 0), so that a run's starting
    point depends on the scheme alone.
    """
    check_choice("model.init", init, INITS)
    if init == "default":
        return
    nonlinearity, param = _GAIN_NONLINEARITY[check_choice("model.activation", activation, ACTIVATIONS)]
    a = 0.0 if param is None else param
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            weight = module.weight
            if init == "xavier_uniform":
                # Gain 1 as published by Glorot & Bengio: with relu this shrinks activations with
                # depth, which is exactly what the init study sets out to show.
                nn.init.xavier_uniform_(weight, gain=1.0)
            elif init == "xavier_normal":
                nn.init.xavier_normal_(weight, gain=1.0)
            elif init == "he_uniform":
                nn.init.kaiming_uniform_(weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
            elif init == "he_normal":
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
