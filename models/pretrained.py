"""The ImageNet weights of a listed model's encoder, as the state dict ``model.weights`` reads.

The one place that lets smp or timm download (``tools/export_weights.py``, on a machine with internet);
training never calls it. ``smp:``/``custom:`` models: the smp encoder (or the timm model of a ``tu-``
encoder, as smp wraps it) at 3 input channels, so :func:`models.weights.match_encoder` adapts the first
convolution to the model's channels when it loads. ``timm:`` models: the whole timm model, as
``timm.create_model(name, pretrained=True).state_dict()`` gives it. ``hint:`` models: their inner model's.
"""
from __future__ import annotations

import socket
import threading
import warnings
from contextlib import nullcontext
from unittest import mock
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hub

from models.registry import resolve

PROBE_TIMEOUT_S = 3.0


def _smp_weights_tag(encoder: str) -> str | bool:
    """``True`` for a timm encoder (its name carries the tag), else smp's ``imagenet`` (or its first) weights."""
    if encoder.startswith("tu-"):
        return True
    settings = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if not settings:
        raise ValueError(f"{encoder}: smp has no pretrained weights for this encoder")
    return "imagenet" if "imagenet" in settings else settings[0]


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub (where smp and timm keep their weights) cannot be reached, or None when it can.

    One name lookup and one TCP connection, each given up after ``timeout`` seconds and never retried, so an
    offline machine learns it in seconds instead of through the hub client's five retries per file.
    """
    host = urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    found: list = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM))
        except OSError as err:
            found.append(err)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        return f"no DNS answer for {host} within {timeout:.0f}s"
    if isinstance(found[0], OSError):
        return f"{host} cannot be resolved: {found[0].strerror or found[0]}"
    family, kind, proto, _, address = found[0][0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
    except OSError as err:
        return f"{host} does not answer: {err.strerror or type(err).__name__}"
    return None


def encoder_state(name: str, *, pretrained: bool = True) -> dict[str, torch.Tensor]:
    """The encoder weights of model ``name`` (``pretrained=False``: randomly initialised, no download).

    Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable: :func:`hub_unreachable`) the weights come only from
    the local cache, without a connection attempt. Raises ValueError for a family without an ImageNet encoder
    and ConnectionError (one line) when the weights can be neither downloaded nor found in the cache.
    """
    family, rest = resolve(name)
    if family.name == "hint":
        return encoder_state(rest, pretrained=pretrained)
    if family.name not in ("smp", "custom", "timm"):
        raise ValueError(f"{name}: the {family.name!r} family has no ImageNet encoder to export "
                         "(families with one: smp, custom, timm, hint over those)")
    offline = "HF_HUB_OFFLINE=1 is set" if hub.HF_HUB_OFFLINE else (hub_unreachable() if pretrained else None)
    try:
        # offline: the hub client looks in its cache only (no request, so none of its retries)
        with mock.patch.object(hub, "HF_HUB_OFFLINE", True) if offline else nullcontext():
            return _build_encoder(family.name, rest, pretrained)
    except (ValueError, TypeError):
        raise
    except Exception as err:  # hub, URL and file errors of two libraries: a download that did not happen
        if offline:
            raise ConnectionError(f"{name}: offline ({offline}) and the ImageNet weights are not in the local cache; "
                                  "export them on a machine with internet and copy the file here") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConnectionError(f"{name}: could not download the ImageNet weights ({type(err).__name__}: {first}); "
                              "export them on a machine with internet and copy the file here") from None


def _build_encoder(family: str, rest: str, pretrained: bool) -> dict[str, torch.Tensor]:
    """The state dict smp or timm builds for ``family:rest`` (downloading its weights with ``pretrained``)."""
    if family == "timm":
        return timm.create_model(rest, pretrained=pretrained).state_dict()
    arch, _, encoder = rest.partition("/")
    weights = _smp_weights_tag(encoder) if pretrained else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smp.create_model("unet" if family == "custom" else arch, encoder_name=encoder,
                                 encoder_weights=weights, in_channels=3, classes=1)
    return model.encoder.state_dict()
