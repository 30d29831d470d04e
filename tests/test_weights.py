"""Local weights: plain timm state dicts into smp's tu- encoders, exported encoders round-trip, UNet 3+ over
encoders that start at stride 4."""
from __future__ import annotations

import pytest
import timm
import torch

from models import create_model
from models.weights import _plain


@pytest.mark.parametrize("name", ["convnext_atto", "resnet10t"])
def test_a_plain_timm_state_dict_loads_into_the_tu_encoder(tmp_path, name):
    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False).state_dict()
    torch.save(source, tmp_path / "timm.pth")
    by_plain = {_plain(k): v for k, v in source.items()}
    model = create_model(f"smp:unet/tu-{name}", task="segmentation", num_outputs=2, in_channels=3,
                         weights=str(tmp_path / "timm.pth"))
    encoder = model.encoder.state_dict()
    assert len(encoder) > 80
    for key, value in encoder.items():
        assert torch.equal(value, by_plain[_plain(key)]), key
    gray = create_model(f"smp:unet/tu-{name}", task="segmentation", num_outputs=2, in_channels=1,
                        weights=str(tmp_path / "timm.pth"))
    first = next(k for k, v in gray.encoder.state_dict().items() if v.ndim == 4)
    assert torch.allclose(gray.encoder.state_dict()[first], by_plain[_plain(first)].sum(1, keepdim=True))


def test_a_state_dict_of_another_model_is_refused_naming_the_count_and_a_key(tmp_path):
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r10.pth")
    with pytest.raises(ValueError, match=r"r10.pth: only 0 of \d+ encoder tensors match this architecture \(e.g. no "
                                         r"tensor of shape \(\d+, 1, 4, 4\) for 'model.stem_0.weight'; the file has "
                                         r"\d+ tensors, e.g. 'conv1.0.weight'\)"):
        create_model("smp:unet/tu-convnext_atto", task="segmentation", num_outputs=2, weights=str(tmp_path / "r10.pth"))


@pytest.mark.parametrize("name", ["smp:fpn/mit_b0", "custom:unet3plus/tu-resnet10t", "timm:resnet10t"])
def test_an_exported_encoder_round_trips_through_model_weights(tmp_path, capsys, name):
    from tools import export_weights

    out = tmp_path / "enc.pth"
    assert export_weights.main([name, "-o", str(out), "--random"]) == 0
    assert f"{out}: " in capsys.readouterr().out
    exported = torch.load(out, weights_only=True)
    task, n = ("boneage", 1) if name.startswith("timm:") else ("segmentation", 2)
    model = create_model(name, task=task, num_outputs=n, in_channels=3, weights=str(out))
    own = model.backbone.state_dict() if task == "boneage" else model.encoder.state_dict()
    by_plain = {_plain(k): v for k, v in exported.items()}
    for key, value in own.items():
        assert torch.equal(value, by_plain[_plain(key)]), key


def test_export_with_hf_hub_offline_is_one_error_line_and_no_file(tmp_path, capsys, no_network):
    from tools import export_weights

    out = tmp_path / "r18.pth"
    assert export_weights.main(["smp:unet/resnet18", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: smp:unet/resnet18: offline (HF_HUB_OFFLINE=1 is set) and the ImageNet weights are not in "
                   "the local cache; export them on a machine with internet and copy the file here\n")
    assert not out.exists()
    assert export_weights.main(["shsnet:unet", "-o", str(out)]) == 2
    assert "has no ImageNet encoder" in capsys.readouterr().err


def test_export_without_internet_fails_fast_in_one_line(tmp_path, capsys, monkeypatch, no_network):
    """HF_HUB_OFFLINE unset and no DNS: the probe's one lookup fails, and the hub client is never asked to
    connect (no_network), so none of its retry lines appear."""
    import socket

    from huggingface_hub import constants
    from tools import export_weights

    lookups = []

    def no_dns(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    out = tmp_path / "r18.pth"
    assert export_weights.main(["smp:unet/resnet18", "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: smp:unet/resnet18: offline (huggingface.co cannot be resolved: Name or service not "
                            "known) and the ImageNet weights are not in the local cache; export them on a machine "
                            "with internet and copy the file here\n")
    assert lookups == ["huggingface.co"] and "Retry" not in captured.out + captured.err and not out.exists()
    assert constants.HF_HUB_OFFLINE is False  # the cache-only mode lasted for the export alone


def test_the_probe_says_why_the_hub_cannot_be_reached(monkeypatch):
    import socket

    from models.pretrained import hub_unreachable

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                 ("127.0.0.1", 9))])

    def refused(self, address):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket.socket, "connect", refused)
    assert hub_unreachable() == "huggingface.co does not answer: Connection refused"
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: None)
    assert hub_unreachable() is None


@pytest.mark.parametrize("encoder,size", [("mit_b0", 64), ("tu-convnext_atto", 64),
                                          ("tu-swin_tiny_patch4_window7_224", 224)])
def test_unet3plus_over_encoders_that_start_at_stride_4(encoder, size):
    """MiT and timm's ConvNeXt/Swin have no stride-2 stage (smp gives it 0 channels); Swin's features are NHWC."""
    model = create_model(f"custom:unet3plus/{encoder}", task="segmentation", num_outputs=3, in_channels=1).train()
    out = model(torch.randn(1 if size > 64 else 2, 1, size, size))
    out.mean().backward()
    assert out.shape[1:] == (3, size, size) and torch.isfinite(out).all()
    assert model.encoder.out_channels[1] == 0 and len(model.stages) == 4
