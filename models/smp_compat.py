"""Which smp architecture x encoder pairs build, and the input sizes each pair takes.

Rules come from smp itself where it states them in code a rule can read:

- *Dilated architectures* are those whose ``encoder_output_stride`` defaults below 32 (DeepLabV3: 8,
  DeepLabV3+: 16, PAN: 16); they call ``encoder.make_dilated``. smp encoder classes that override
  ``EncoderMixin.make_dilated`` do so to refuse it (VGG, DenseNet, Xception, InceptionV4,
  InceptionResNetV2), so those encoders are not paired with a dilated architecture.
- ``tu-`` encoders: the pair is built once on the meta device (no memory, no weights) and smp's or
  timm's own error is the reason (e.g. a ViT under UNet: "Unsupported model downsampling pattern";
  Swin under DeepLabV3+: no ``output_stride``).
- The input: a multiple of the encoder's output stride (``min(encoder_output_stride, 2**encoder_depth)``)
  where the architecture's ``requires_divisible_input_shape`` says so; a ViT under DPT takes only the
  size in timm's ``pretrained_cfg`` when that is ``fixed_input_size`` (any ``tu-`` encoder: ViT, Swin, ...).

Rules smp states only inside a constructor or a decoder's layers (:data:`REFUSED_PREFIXES`,
:data:`MIN_FEATURE_SIZE`) are a short table; tests/test_registry.py builds pairs to check it.
"""
from __future__ import annotations

import inspect
import warnings
from functools import lru_cache

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin

from models.registry import InputSize, ModelOptionsError, close_matches, refuse_unknown

# architecture -> (encoder name prefix it refuses, why); from smp 0.6's constructors
REFUSED_PREFIXES: dict[str, tuple[str, str]] = {
    "unetplusplus": ("mit_b", "smp's UNet++ refuses MiT encoders (MiT has no stride-2 features for its nested skips)"),
    "linknet": ("mit_b", "smp's Linknet refuses MiT encoders (MiT has no stride-2 features for its first decoder block)"),
}
# architecture -> the smallest size its decoder needs at the encoder's deepest feature map
MIN_FEATURE_SIZE: dict[str, int] = {
    "pan": 8,   # PAN's feature pyramid attention max-pools the deepest map three times (by 2 each)
}
DPT_EXAMPLES = ("tu-vit_tiny_patch16_224", "tu-vit_small_patch16_224", "tu-vit_base_patch16_224")
# Keywords the harness's smp builder sets itself (model.name's encoder, no download, the task's channels).
BUILDER_SET = ("encoder_name", "encoder_weights", "in_channels", "classes")


def arch_class(arch: str) -> type:
    return smp.MODEL_ARCHITECTURES_MAPPING[arch]


def _default(arch: str, option: str, fallback: int) -> int:
    param = inspect.signature(arch_class(arch).__init__).parameters.get(option)
    return param.default if param is not None and isinstance(param.default, int) else fallback


def dilated_stride(arch: str, options: dict | None = None) -> int:
    """The output stride the architecture asks its encoder for (32: no dilation)."""
    return int((options or {}).get("encoder_output_stride") or _default(arch, "encoder_output_stride", 32))


def refuses_dilation(encoder: str) -> bool:
    """An smp encoder whose class overrides ``make_dilated`` (smp does that only to raise)."""
    entry = smp.encoders.encoders.get(encoder)
    return entry is not None and entry["encoder"].make_dilated is not EncoderMixin.make_dilated


def problem(arch: str, encoder: str) -> str | None:
    """Why smp cannot build ``arch`` over ``encoder`` with default options (None: it can)."""
    if arch == "dpt" and not encoder.startswith("tu-"):
        return "smp's DPT takes only timm encoders ('tu-<name>'; it is made for ViTs)"
    prefix, why = REFUSED_PREFIXES.get(arch, ("", ""))
    if prefix and encoder.startswith(prefix):
        return why
    stride = dilated_stride(arch)
    if stride < 32 and refuses_dilation(encoder):
        cls = smp.encoders.encoders[encoder]["encoder"].__name__
        return (f"{arch} dilates its encoder to output stride {stride} and smp's {cls} does not support dilation "
                "(max pooling or concatenated blocks)")
    if encoder.startswith("tu-"):
        return _meta_build(arch, encoder)[0]
    return None


def valid_encoders(arch: str) -> list[str]:
    """The smp encoders (not ``tu-``) that ``arch`` builds with."""
    return [e for e in smp.encoders.get_encoder_names() if problem(arch, e) is None]


def suggest(arch: str, encoder: str, n: int = 3) -> list[str]:
    """Valid encoders for ``arch`` close to ``encoder`` (or the first valid ones)."""
    if arch == "dpt":
        return list(DPT_EXAMPLES)
    valid = valid_encoders(arch)
    if encoder.startswith("tu-"):
        valid = ["tu-resnet34", "tu-convnext_atto", "tu-efficientnet_b0"] + valid
    hits = close_matches(encoder, valid, n)
    return hits + [e for e in valid if e not in hits][: n - len(hits)]


@lru_cache(maxsize=256)
def _meta_build(arch: str, encoder: str) -> tuple[str | None, int | None]:
    """Build the pair on the meta device: (smp's or timm's refusal, the encoder's output stride).

    A failure that only the meta device causes (e.g. ``Tensor.item()`` in a constructor) is no refusal: the
    real build reports whatever it is; the sizes are then unknown (None).
    """
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None)
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"smp/timm cannot build it ({first})", None
    except (RuntimeError, NotImplementedError):
        return None, None
    return None, int(model.encoder.output_stride)


def fixed_size(encoder: str, options: dict) -> int | None:
    """The one input size a ``tu-`` encoder takes (timm's ``fixed_input_size``, e.g. ViT, Swin), or None.

    ``model.options.img_size`` sets another size (smp passes it on to timm); ``dynamic_img_size`` lifts it (ViT).
    """
    if not encoder.startswith("tu-") or options.get("dynamic_img_size"):
        return None
    if options.get("img_size"):
        return int(options["img_size"])
    cfg = timm.models.get_pretrained_cfg(encoder[3:])
    return int(cfg.input_size[-1]) if cfg is not None and cfg.fixed_input_size and cfg.input_size else None


FIXED_NOTE = "timm's fixed input size; model.options.img_size changes it, dynamic_img_size: true lifts it (ViT)"


def input_size(arch: str, encoder: str, options: dict) -> InputSize:
    """The sizes ``arch`` over ``encoder`` takes with ``options`` (``model.options``)."""
    stride = min(dilated_stride(arch, options), 2 ** int(options.get("encoder_depth") or _default(arch, "encoder_depth", 5)))
    if arch == "dpt" and encoder.startswith("tu-"):
        stride = _meta_build(arch, encoder)[1] or stride   # the ViT's patch size
    multiple = stride if getattr(arch_class(arch), "requires_divisible_input_shape", True) else 1
    minimum = max(multiple, MIN_FEATURE_SIZE[arch] * stride) if arch in MIN_FEATURE_SIZE else multiple
    fixed = fixed_size(encoder, options)
    return InputSize(multiple=multiple, minimum=minimum, fixed=fixed, note=FIXED_NOTE if fixed else "")


def arch_options(arch: str) -> set[str]:
    """The keyword parameters of the architecture's constructor that ``model.options`` may set."""
    params = inspect.signature(arch_class(arch).__init__).parameters.values()
    return {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY} \
        - {"self", *BUILDER_SET}


def check_options(arch: str, encoder: str, options: dict) -> None:
    """Refuse ``model.options`` that smp would drop: every key must be a parameter of the architecture, or,
    with a ``tu-`` encoder, one that timm's model takes (smp passes the rest on to the encoder; its own
    encoders ignore them, timm refuses what its model lacks, which a meta-device build tells here)."""
    model = f"smp:{arch}/{encoder}"
    for key in options:
        if key in BUILDER_SET:
            raise ModelOptionsError(f"model.options: '{key}' is set by the harness (model.name, the task), not an "
                                    f"option of {model}")
    valid = arch_options(arch)
    unknown = [k for k in options if k not in valid]
    if not unknown:
        return
    if not encoder.startswith("tu-"):
        refuse_unknown(model, unknown, valid, f" (not a parameter of smp's {arch}, and smp's {encoder} encoder "
                                              "takes none)")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smp.create_model(arch, encoder_name=encoder, encoder_weights=None, **options)
    except TypeError as err:
        refused = [k for k in unknown if f"'{k}'" in str(err)]
        if refused:
            refuse_unknown(model, refused, valid, f" (neither smp's {arch} nor timm's {encoder[3:]} takes it)")
    except Exception:  # noqa: BLE001  (a value the real build refuses, or one only the meta device fails on)
        return
