"""dlx's built-in models: the options conf/model/*.yaml name by `_target_`.

A model, built-in or the user's, is called with ``input_shape`` (one sample's shape: (C, H, W) images,
(C, L) sequences or (F,) features), ``num_classes`` and its options, and returns logits of shape
(N, num_classes). dlx's models also expose ``blocks`` (their depth units in forward order, for per-layer
hooks), ``head`` (the final Linear) and ``num_layers``. Each constructor's signature is the one home of
its options' defaults, ranges and choices; ``option_problems`` holds the rules that join options.
"""

from __future__ import annotations

from dlx.models.cnn import CNN
from dlx.models.layers import NOT_OPTIONS, Activation, Init, Norm, Pool, check_io
from dlx.models.mlp import MLP
from dlx.models.resnet import ResNet

__all__ = ["CNN", "MLP", "NOT_OPTIONS", "Activation", "Init", "Norm", "Pool", "ResNet", "check_io"]
