import pytest
import yaml

from engine.config import ConfigError, build_config, load_config, parse_overrides, save_config
from tasks.spec import task_spec

BASE = {"task": "segmentation", "data": {"root": "x/train"}, "model": {"name": "smp:unet/resnet18"}}


def write(tmp_path, raw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_in_wandb_agent_form(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["--train.lr=0.0003", "--data.fold", "2", "--loss.weights.dice=0.5",
                                              "--model.name=smp:fpn/resnet34", "--inference.threshold=0.4"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.fold == 2
    assert cfg.loss.weights == {"bce": 1.0, "dice": 0.5}
    assert cfg.model.name == "smp:fpn/resnet34"
    assert cfg.inference.threshold == pytest.approx(0.4)
    assert cfg.name == "exp" and cfg.run_name == "exp-f2"


def test_a_mapping_override_replaces_its_key_and_dotted_keys_change_one(tmp_path):
    raw = dict(BASE, task="keypoints", model={"name": "shsnet:unet", "options": {"base_channels": 16, "depth": 4}})
    kept = load_config(write(tmp_path, raw), ["--model.options.depth=3"])
    assert kept.model.options == {"base_channels": 16, "depth": 3}
    cleared = load_config(write(tmp_path, raw), ["--model.name=smp:unet/resnet18", "--model.options={}"])
    assert cleared.model.name == "smp:unet/resnet18" and cleared.model.options == {}
    # a mapping value replaces its key; dotted keys after it extend the replacement, before it are dropped
    after = load_config(write(tmp_path, raw), ["--model.options={}", "--model.options.decoder_attention_type=scse"])
    assert after.model.options == {"decoder_attention_type": "scse"}
    before = load_config(write(tmp_path, raw), ["--model.options.depth=3", "--model.options={out_stride: 2}"])
    assert before.model.options == {"out_stride": 2}


def test_unknown_key_names_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; did you mean 'train.lr'"):
        load_config(write(tmp_path, BASE), ["--train.lrr=0.1"])
    raw = dict(BASE, data={"root": "x", "imagesize": 64})
    with pytest.raises(ConfigError, match=r"did you mean 'data.image_size'") as err:
        load_config(write(tmp_path, raw))
    assert "exp.yaml" in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'"):
        load_config(write(tmp_path, dict(BASE, trian={})))
    keypoints = {"task": "keypoints", "data": {"root": "x", "clicks": {"train_click": 2}}}
    with pytest.raises(ConfigError, match=r"did you mean 'data.clicks.train_clicks'\? \(valid in 'data.clicks': "
                                          r"train_clicks, worst_of"):
        load_config(write(tmp_path, keypoints))


def test_bad_values_and_task(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(write(tmp_path, BASE), ["--train.epochs=many"])
    with pytest.raises(ConfigError, match="did you mean 'segmentation'"):
        load_config(write(tmp_path, dict(BASE, task="segmentaton")))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_overrides(["lr=3"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["--train.epochs=3"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_override_values_as_a_wandb_agent_writes_them():
    out = parse_overrides(["--train.amp=off", "--train.clip_grad=None", "--train.lr=1e-05", "--train.channels_last=true",
                           "--inference.tta.scales=[0.75, 1.0]"])
    assert out["train"] == {"amp": "off", "clip_grad": None, "lr": 1e-05, "channels_last": True}
    assert out["inference"]["tta"]["scales"] == [0.75, 1.0]


def test_task_specific_data_keys_survive_overrides_and_saving(tmp_path):
    raw = dict(BASE, data={"root": "x/train", "val_at_train_size": True, "cache_dir": "c"})
    cfg = load_config(write(tmp_path, raw), ["--train.lr=0.1"])
    assert cfg.data.val_at_train_size is True and cfg.data.cache_dir == "c"
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml").data.val_at_train_size is True


@pytest.mark.parametrize("task,data,expected", [
    ("segmentation", {}, {"bce": 1.0, "dice": 1.0}),
    ("keypoints", {}, {"kl": 1.0}),
    ("boneage", {}, {"l1": 1.0}),
])
def test_config_without_loss_gets_its_tasks_default(tmp_path, task, data, expected):
    """A keypoint or bone-age config without a loss section used to get segmentation's bce + dice."""
    cfg = build_config({"task": task, "data": {"root": str(tmp_path), "image_size": 64, **data}})
    assert cfg.loss.weights == expected
    task_spec(task).task_class()(cfg)   # the task's loss accepts it
