"""``classifier:<any timm model>``: an image classifier over the task's classes (orientation: the 12 SHS_NET
classes), one input channel, randomly initialised or from a local weights file (no download).

``width`` narrows a timm ResNet to stages of ``width, 2 width, 4 width, 8 width`` channels (16: a quarter of
resnet10t, 0.3 M parameters, which trains in minutes on a CPU; on the shared CPU lcnet_035 did not learn in
the same number of steps); without it the architecture keeps its own widths. ``drop_rate``: dropout before the
classifier head.
"""
from __future__ import annotations

from torch import nn

from models.registry import register_family
from models.timm_models import list_names as timm_list_names
from models.timm_models import validate
from models.weights import load_local_weights


def list_names() -> list[str]:
    return [n.replace("timm:", "classifier:", 1) for n in timm_list_names()]


@register_family("classifier", tasks=("orientation",), list_names=list_names, validate=validate,
                 examples=("classifier:resnet10t",))
def build(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, width: int | None = None,
          drop_rate: float = 0.0, weights: str | None = None) -> nn.Module:
    """timm image classifier (orientation), one input channel, narrowed by ``width``"""
    import timm

    kwargs = {} if width is None else {"channels": tuple(width * 2 ** i for i in range(4)), "stem_width": width}
    model = timm.create_model(rest, pretrained=False, num_classes=num_outputs, in_chans=in_channels,
                              drop_rate=drop_rate, **kwargs)
    load_local_weights(model, weights)
    return model
