import pytest
import torch

import models
from models import ModelOptionsError, UnknownModelError, create_model


@pytest.mark.slow
def test_any_smp_arch_encoder_pair_builds():
    for name in ("smp:unet/resnet18", "smp:fpn/tu-resnet10t", "smp:segformer/mit_b0", "custom:unet3plus/resnet18"):
        model = create_model(name, task="segmentation", num_outputs=29, in_channels=1)
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 29, 64, 64), name


def test_unknown_names_list_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean: unet"):
        create_model("smp:unett/resnet34", task="segmentation", num_outputs=29)
    with pytest.raises(UnknownModelError, match="resnet34"):
        create_model("smp:unet/resnet33", task="segmentation", num_outputs=29)
    with pytest.raises(UnknownModelError, match="families: .*smp"):
        create_model("smq:unet/resnet34", task="segmentation", num_outputs=29)


@pytest.mark.parametrize("name, task, options, says", [
    ("smp:unet/resnet18", "keypoints", {"base_channels": 16, "depth": 4}, "multiple values for keyword argument 'depth'"),
    ("shsnet:unet", "keypoints", {"base_chanels": 16}, "unexpected keyword argument 'base_chanels'"),
    ("timm:resnet18", "boneage", {"drop_rat": 0.1}, "unexpected keyword argument 'drop_rat'"),
])
def test_options_a_model_does_not_take_are_one_error_naming_the_key(name, task, options, says):
    # e.g. a shsnet:unet config switched to an smp model with its options left in place
    with pytest.raises(ModelOptionsError) as err:
        create_model(name, task=task, num_outputs=3, in_channels=1, weights="runs/x/best.pt", **options)
    message = str(err.value)
    assert message.startswith(f"model.options: {name} cannot be built with {options}: "), message
    assert says in message, message


def test_a_keyword_error_that_is_not_about_an_option_keeps_its_traceback(monkeypatch):
    def helper(size):
        return size

    def broken_builder(rest, **kwargs):
        return helper(size=1, typo=True)   # a builder's own bug: a TypeError naming 'typo', not an option

    monkeypatch.setitem(models.registry._FAMILIES, "broken", models.registry.ModelFamily(
        name="broken", builder=broken_builder, tasks=("keypoints",), kind="torch", list_names=tuple, validate=None))
    with pytest.raises(TypeError, match="typo") as err:
        create_model("broken:x", task="keypoints", num_outputs=3, depth=4)
    assert not isinstance(err.value, ModelOptionsError)


def test_listing_filters_by_task():
    seg = models.list_models("segmentation")
    assert "smp:unetplusplus/resnet34" in seg["smp"]
    assert "custom:unet3plus/resnet34" in seg["custom"]
    for family, names in models.list_models("boneage").items():
        assert "boneage" in models.families()[family].tasks


def test_list_models_cli(capsys):
    import train

    assert train.main(["--list-models", "--task", "segmentation"]) == 0
    out = capsys.readouterr().out
    assert "smp:deeplabv3plus/resnet50" in out and "custom:unet3plus/resnet34" in out


def test_list_models_prints_names_only_and_one_line_on_the_timm_encoders(capsys):
    """Every listed line is a name that resolves, with no pattern among them; each family that takes more says so in
    one "+" line, the smp one with the number of timm models and the command that lists them."""
    import timm

    import train

    assert train.main(["--list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    entries = [line.strip() for line in lines if line.startswith("  ")]
    notes = [e for e in entries if e.startswith("+ ")]
    names = [e for e in entries if not e.startswith("+ ")]
    assert not [n for n in names if "<" in n or " " in n]
    for name in names[::25] + [n for n in names if n.startswith(("hint:", "yolo:", "shsnet:"))]:
        models.resolve(name)
    smp_note = next(n for n in notes if n.startswith("+ smp:<arch>/tu-<name>"))
    assert f"any of {len(timm.list_models())} timm models" in smp_note
    assert "python train.py --list-models --encoders 'convnext*'" in smp_note
    assert sorted(n.split(":")[0].lstrip("+ ") for n in notes) == ["custom", "hint", "smp", "yolo"]

    assert train.main(["--list-models", "--encoders", "convnext_at*"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["tu-convnext_atto", "tu-convnext_atto_ols", "tu-convnext_atto_rms"]
    assert err.startswith("3 timm models match 'convnext_at*'")
    for encoder in out.split():
        models.resolve(f"smp:unet/{encoder}")


def test_local_weights_only(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_model("smp:unet/resnet18", task="segmentation", num_outputs=2, weights=str(tmp_path / "r18.pth"))
    src = create_model("smp:unet/resnet18", task="segmentation", num_outputs=2)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pth")
    dst = create_model("smp:unet/resnet18", task="segmentation", num_outputs=2, weights=str(tmp_path / "enc.pth"))
    for key, value in src.encoder.state_dict().items():
        assert torch.equal(value, dst.encoder.state_dict()[key])



def test_weights_files_are_read_as_tensors_only(tmp_path, planted):
    """A pickled object in a weights file or checkpoint (torch archive or raw pickle) is refused and never
    built; a file that is no torch file at all is "not readable", not taken for a pickle."""
    from engine.checkpoint import load_checkpoint
    from tasks.formats import FormatError
    from tasks.formats.tensors import PickledFileError

    planted.write(tmp_path / "archive.pt")
    planted.write(tmp_path / "raw.pt", raw=True)
    for name in ("archive.pt", "raw.pt"):
        with pytest.raises(PickledFileError, match="pickled Python objects"):
            create_model("smp:unet/resnet18", task="segmentation", num_outputs=2, weights=str(tmp_path / name))
        with pytest.raises(PickledFileError, match=f"{name}: holds pickled Python objects"):
            load_checkpoint(tmp_path / name)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(FormatError, match="text.pt: not a readable checkpoint") as err:
        load_checkpoint(tmp_path / "text.pt")
    assert not isinstance(err.value, PickledFileError)
    assert not planted.marker.exists()
