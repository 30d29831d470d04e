"""``timm:<any timm model>``: a bone-age regressor, image backbone + the patient's sex fused in the head.

Design (as the RSNA 2017 winners, e.g. 16BitNet's ResNet/Inception with a sex branch): the timm model
without its classifier gives pooled image features ``f`` (``num_features`` of them); the sex (0/1)
goes through a small dense layer to ``sex_features`` values; ``[f, sex]`` is concatenated and a
two-layer MLP (``head_hidden`` units, ReLU, dropout) outputs one value, the normalised age. Fusing late
keeps any timm backbone usable unchanged and lets the head learn sex-specific offsets and slopes.
``sex_input: false`` drops the sex branch (image only). The last layer starts at zero, so an untrained
model predicts the mean age.

Weights come only from a local file (``model.weights``): a timm/torchvision state dict of the backbone
(the classifier is dropped, the first convolution is adapted to one input channel by timm), or a
whole-model checkpoint of this harness (e.g. a phantom run to fine-tune on real images).
"""
from __future__ import annotations

from functools import lru_cache

import timm
import torch
from torch import nn

from models.registry import UnknownModelError, close_matches, register_family
from models.weights import read_state_dict


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def validate(rest: str) -> None:
    if rest not in timm_names():
        hits = close_matches(rest, timm_names())
        raise UnknownModelError(f"unknown timm model {rest!r}" + (f"; did you mean: {', '.join(hits)}" if hits else "")
                                + "  (any name of timm.list_models(), e.g. timm:resnet18)")


def list_names() -> list[str]:
    return [f"timm:{n}" for n in timm_names()]


class TimmRegressor(nn.Module):
    """``forward(image (B, C, H, W), male (B,) or None) -> (B,)`` normalised age."""

    def __init__(self, backbone: nn.Module, sex_input: bool = True, sex_features: int = 32, head_hidden: int = 256,
                 dropout: float = 0.2, num_outputs: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.sex_input = sex_input
        # Models with a conv head after the pooling (MobileNetV3, ...) output head_hidden_size features.
        n_feat = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.sex = nn.Sequential(nn.Linear(1, sex_features), nn.ReLU(inplace=True)) if sex_input else None
        self.head = nn.Sequential(
            nn.Linear(n_feat + (sex_features if sex_input else 0), head_hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(head_hidden, num_outputs))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.backbone(image)
        if self.sex is not None:
            if male is None:
                raise ValueError("this regressor takes the sex as a second input (model.options.sex_input: true); "
                                 "call model(image, male)")
            feats = torch.cat([feats, self.sex(male.to(feats.dtype).reshape(-1, 1))], dim=1)
        out = self.head(feats)
        return out.squeeze(1) if out.shape[1] == 1 else out


def _read_state(path: str) -> dict[str, torch.Tensor]:
    return read_state_dict(path, "torch.save(timm.create_model(name, pretrained=True).state_dict(), NAME)")


@register_family("timm", tasks=("boneage",), list_names=list_names, validate=validate,
                 examples=("timm:resnet18", "timm:resnet50", "timm:efficientnet_b0", "timm:convnext_nano",
                           "timm:xception41"))
def build_timm(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
               sex_input: bool = True, sex_features: int = 32, head_hidden: int = 256, dropout: float = 0.2,
               drop_rate: float = 0.0, drop_path_rate: float | None = None, bn_momentum: float | None = None
               ) -> nn.Module:
    """Any timm model as a regressor with the sex fused into the head (weights only from a local file)."""
    state = _read_state(weights) if weights else None
    whole = state is not None and any(k.startswith(("backbone.", "head.")) for k in state)
    kwargs = {"num_classes": 0, "in_chans": in_channels, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if state is not None and not whole:
        backbone = timm.create_model(rest, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    else:
        backbone = timm.create_model(rest, pretrained=False, **kwargs)
    if bn_momentum is not None:
        # Short runs (minutes on a CPU) change the weights fast: running statistics that follow them
        # faster keep the eval-mode output close to the train-mode one.
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    model = TimmRegressor(backbone, sex_input, sex_features, head_hidden, dropout, num_outputs)
    if whole:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: checkpoint does not fit timm:{rest} with these options "
                             f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                             f"e.g. {unexpected[:2]})")
    return model
