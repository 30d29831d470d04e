"""The registry lists only what builds: a seeded sample of every listed family builds, runs forward and
backward at the input size the registry says it needs, and every pair the rules refuse is one smp refuses."""
from __future__ import annotations

import random

import pytest
import segmentation_models_pytorch as smp
import torch

import models
from models import UnknownModelError, create_model, input_size, resolve
from models import smp_compat

SEED = 0
# Small encoders (a few million parameters) to sample from, so the sample runs in seconds on a CPU.
SMALL = ("resnet18", "mobilenet_v2", "efficientnet-b0", "timm-efficientnet-b0", "timm-tf_efficientnet_lite0",
         "mit_b0", "mobileone_s0", "timm-skresnet18", "tu-resnet10t", "tu-convnext_atto", "tu-efficientnet_b0")
TINY_TIMM = ("timm:resnet10t", "timm:mobilenetv3_small_050", "timm:efficientnet_b0")


def _listed(family: str, task: str = "segmentation") -> list[str]:
    return models.list_models(task)[family]


def _sample() -> list[tuple[str, str, dict]]:
    """(name, task, options): per smp architecture one listed smp encoder and one timm encoder, and per other
    family one listed name, all drawn with a fixed seed."""
    rng = random.Random(SEED)
    listed = set(_listed("smp"))
    picks = []
    for arch in list(smp.MODEL_ARCHITECTURES_MAPPING):
        if arch == "dpt":
            picks.append((f"smp:dpt/{smp_compat.DPT_EXAMPLES[0]}", "segmentation", {"img_size": 64}))
            continue
        picks.append((rng.choice([f"smp:{arch}/{e}" for e in SMALL if f"smp:{arch}/{e}" in listed]), "segmentation", {}))
        picks.append((f"smp:{arch}/{rng.choice([e for e in SMALL if e.startswith('tu-')])}", "segmentation", {}))
    picks.append((rng.choice([n for n in _listed("custom") if n.split("/")[1] in SMALL]), "segmentation", {}))
    picks.append(("shsnet:unet", "keypoints", {"base_channels": 8, "depth": 3}))
    picks.append((f"hint:{rng.choice([n for n in _listed('smp', 'keypoints') if n.split('/')[1] in SMALL])}",
                  "keypoints", {}))
    picks.append((rng.choice(TINY_TIMM), "boneage", {"sex_input": False}))
    return picks


@pytest.mark.slow
@pytest.mark.parametrize("name,task,options", _sample())
def test_a_seeded_sample_of_listed_names_trains_a_step(name, task, options):
    torch.manual_seed(SEED)
    size = input_size(name, task, options).smallest(32)
    model = create_model(name, task=task, num_outputs=3 if task != "boneage" else 1, in_channels=1, **options).train()
    out = model(torch.randn(2, 1, size, size))
    out.float().mean().backward()
    assert out.shape[0] == 2 and torch.isfinite(out).all(), name
    if task != "boneage":
        assert out.shape[1] == 3, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), name


def test_the_external_family_builds_its_listed_names():
    name = random.Random(SEED).choice(_listed("yolo"))
    assert models.is_external(name)
    assert create_model(name, task="segmentation", num_outputs=29).arch == name.partition(":")[2]


def test_every_listed_pair_resolves_and_every_refused_pair_is_left_out(capsys):
    import train

    assert train.main(["--list-models", "--task", "segmentation"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    names = [n for n in printed if not n.startswith("+ ")]  # a "+" line: the names beyond the list
    assert len(names) > 800
    for name in names:
        resolve(name)   # raises for a pair the rules refuse
    listed = set(_listed("smp"))
    all_pairs = {f"smp:{a}/{e}" for a in list(smp.MODEL_ARCHITECTURES_MAPPING) for e in smp.encoders.get_encoder_names()}
    refused = sorted(all_pairs - listed)
    assert {"smp:dpt/resnet34", "smp:deeplabv3plus/vgg11", "smp:pan/densenet121", "smp:deeplabv3/xception",
            "smp:deeplabv3plus/inceptionv4", "smp:unetplusplus/mit_b0", "smp:linknet/mit_b2"} <= set(refused)
    assert "smp:deeplabv3plus/resnet18" in listed and "smp:segformer/mit_b0" in listed


@pytest.mark.parametrize("name", random.Random(SEED).sample(
    ["smp:dpt/resnet18", "smp:deeplabv3/vgg11", "smp:deeplabv3plus/densenet121", "smp:pan/xception",
     "smp:deeplabv3plus/inceptionv4", "smp:pan/inceptionresnetv2", "smp:unetplusplus/mit_b0", "smp:linknet/mit_b0"], 4))
def test_the_rules_agree_with_smp(name):
    """A refused pair is one smp's own constructor refuses (built on the meta device: no memory, no weights)."""
    arch, encoder = name.partition(":")[2].split("/")
    with pytest.raises(UnknownModelError, match=rf"^{name}: .+; try \S+"):
        resolve(name)
    with pytest.raises(ValueError), torch.device("meta"):
        smp.create_model(arch, encoder_name=encoder, encoder_weights=None)


def test_timm_encoders_are_checked_by_smp_and_timm():
    with pytest.raises(UnknownModelError, match="smp:unet/tu-vit_tiny_patch16_224: smp/timm cannot build it "
                                                r"\(Unsupported model downsampling pattern.\); try tu-"):
        resolve("smp:unet/tu-vit_tiny_patch16_224")


def test_input_sizes_come_from_the_pair():
    assert input_size("smp:unet/resnet18").problem(100, "m") is None
    assert input_size("smp:fpn/resnet18").multiple == 32
    assert input_size("smp:deeplabv3/resnet18").multiple == 8
    assert input_size("smp:fpn/resnet18", options={"encoder_depth": 4}).multiple == 16
    pan = input_size("smp:pan/resnet18")
    assert (pan.multiple, pan.minimum) == (16, 128)
    assert "64 is below 128, the smallest input smp:pan/resnet18 takes; use 128" in pan.problem(64, "smp:pan/resnet18")
    assert input_size("smp:dpt/tu-vit_tiny_patch16_224").fixed == 224
    assert input_size("smp:dpt/tu-vit_tiny_patch16_224", options={"img_size": 64}).fixed == 64
    assert input_size("custom:unet3plus/tu-swin_tiny_patch4_window7_224").fixed == 224


def test_a_refused_pair_is_one_error_line_through_train(tmp_path, capsys):
    import train

    (tmp_path / "exp.yaml").write_text("task: segmentation\ndata: {root: x/train}\nmodel: {name: smp:unet/resnet18}\n")
    assert train.main(["-c", str(tmp_path / "exp.yaml"), "--model.name=smp:deeplabv3plus/vgg11"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.name: smp:deeplabv3plus/vgg11: deeplabv3plus dilates its encoder to output "
                          "stride 16 and smp's VGGEncoder does not support dilation") and "; try " in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name,size,message", [
    ("smp:pan/resnet18", 64, "data.image_size: 64 is below 128, the smallest input smp:pan/resnet18 takes; use 128"),
    ("smp:dpt/tu-vit_tiny_patch16_224", 256, "data.image_size: 256: smp:dpt/tu-vit_tiny_patch16_224 takes only "
     "224x224 inputs (timm's fixed input size; model.options.img_size changes it, dynamic_img_size: true lifts it "
     "(ViT)); use 224"),
    ("smp:pan/resnet18", 128, None),
])
def test_training_checks_the_image_size_the_registry_gives(tmp_path, name, size, message):
    from engine.config import ConfigError, load_config
    from engine.trainer import check_image_size

    (tmp_path / "exp.yaml").write_text(f"task: segmentation\ndata: {{root: x/train, image_size: {size}}}\n"
                                       f"model: {{name: '{name}'}}\n")
    cfg = load_config(tmp_path / "exp.yaml", {})
    if message is None:
        check_image_size(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_image_size(cfg)
    assert str(err.value) == message
