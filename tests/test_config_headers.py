"""The commands written in the shipped configs' headers work as written, and predict and score images that
were not in training.

Each config's leading comment lines hold its recipe (``python train.py ...``, ``python inference.py ...``,
``python tools/score.py ...``). Read statically, without data: every script and config they name exists;
every run folder a command reads (``--ckpt``, ``--stage1``, an ensemble's members) is made by a training
command of the same header; no config, as shipped or as its header overrides it, takes its test images from
its training images; a score against a training root scores only a validation fold's rows (``--subset``).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import train as train_cmd
from cycle.plan import fold_configs, load_plan
from engine.config import Config, load_config, parse_overrides
from ensembles.config import load_ensemble_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
TRAINING = [p for p in CONFIGS if p.parent.name not in ("ensembles", "cycles")]
ENSEMBLES = [p for p in CONFIGS if p.parent.name == "ensembles"]


def header_commands(path: Path) -> list[list[str]]:
    """The commands of a config's leading comment block, continuation lines joined, each split like a shell."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    commands, pending = [], ""
    for line in lines:
        if pending:
            pending += " " + line
        elif line.startswith("python "):
            pending = line
        if pending and not pending.endswith("\\"):
            commands.append(shlex.split(pending, comments=True))
            pending = ""
        elif pending:
            pending = pending[:-1]
    return commands


def placeholder(value: str) -> bool:
    """A path the user fills in: <member>, NEW, /data/..."""
    return "<" in value or value.startswith(("NEW", "/"))


def option(command: list[str], name: str) -> str | None:
    for i, token in enumerate(command):
        if token == name and i + 1 < len(command):
            return command[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def trained_configs(command: list[str]) -> list[Config]:
    """The config of every run a ``python train.py ...`` command makes (one a fold with ``--folds``)."""
    args, rest = train_cmd.parse_args(command[2:])
    overrides = parse_overrides(rest)
    cfg = load_config(ROOT / args.config, overrides)
    if args.folds is None:
        return [cfg]
    folds = range(cfg.data.n_folds) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    return [load_config(ROOT / args.config, {**overrides, "data": {**overrides.get("data", {}), "fold": f}})
            for f in folds]


def cycle_configs(command: list[str]) -> list[Config]:
    """The config of every run a ``python tools/cycle.py PLAN ...`` command trains (each model on each fold)."""
    plan = load_plan(ROOT / command[2])
    return [cfg for configs in fold_configs(plan).values() for cfg in configs]


def image_dirs(cfg: Config) -> tuple[Path, Path | None]:
    """Where a config's training images and its test images live (None: the test rows of the root's split
    file, which are never training rows)."""
    d = cfg.data
    root = (ROOT / d.root).resolve()
    inner = getattr(d, "train_images", getattr(d, "images", ""))
    test_base = (ROOT / d.test_root).resolve() if d.test_root else None
    if hasattr(d, "test_images"):
        return root / inner, (test_base or root) / d.test_images
    return root / inner, (test_base / getattr(d, "images", "") if test_base else None)


def check_test_images(cfg: Config, where: str) -> None:
    train_dir, test_dir = image_dirs(cfg)
    assert test_dir is None or (test_dir != train_dir and test_dir not in train_dir.parents), (
        f"{where}: the test images {test_dir} are (or hold) the training images {train_dir}")


def runs_read(command: list[str]) -> list[str]:
    """Run folders an inference, fit or score command reads (placeholders left out)."""
    script = command[1]
    runs = [Path(option(command, flag)).parent.as_posix() for flag in ("--ckpt", "--stage1")
            if option(command, flag) and not placeholder(option(command, flag))]
    ensemble = option(command, "--ensemble") if script == "inference.py" else (
        command[2] if script == "tools/fit_ensemble.py" else None)
    if ensemble:
        for member in load_ensemble_config(ROOT / ensemble).members:
            runs += [member.run] if member.run else member.runs
    return runs


def check_prediction(command: list[str], made: dict[str, Config], where: str) -> str:
    """The split an inference command predicts; a test prediction of a run with ``--data.test_root`` given must
    not point at that run's training images."""
    split = option(command, "--split") or "test"
    ckpt, test_root = option(command, "--ckpt"), option(command, "--data.test_root")
    if split == "test" and ckpt and test_root and not placeholder(ckpt) and not placeholder(test_root):
        cfg = made[Path(ckpt).parent.as_posix()]
        tree = cfg.to_dict()
        tree["data"]["test_root"] = test_root
        check_test_images(load_config(None, tree), where)
    return split


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_header_commands_name_existing_files_and_runs_they_make(path):
    made: dict[str, Config] = {}
    predicted: dict[str, str] = {}          # submission CSV -> the split it predicts
    for command in header_commands(path):
        where = f"{path.name}: `{shlex.join(command)}`"
        script = command[1]
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        for flag in ("-c", "--config", "--ensemble"):
            value = option(command, flag)
            assert value is None or placeholder(value) or (ROOT / value).is_file(), f"{where}: no file {value}"
        if script in ("train.py", "tools/cycle.py"):
            for cfg in (trained_configs if script == "train.py" else cycle_configs)(command):
                check_test_images(cfg, where)
                made[cfg.run_dir.as_posix()] = cfg
        for run in runs_read(command):
            assert run in made, f"{where} reads {run}, which no command above it trains"
        if script == "inference.py" and option(command, "-o"):
            predicted[option(command, "-o")] = check_prediction(command, made, where)
        if script == "tools/score.py" and not placeholder(command[2]):
            assert command[2] in predicted, f"{where} scores a CSV that no inference command above writes"
            if predicted[command[2]] == "val":
                assert "--subset" in command, f"{where} scores a validation fold's rows without --subset"


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_config_tests_on_its_training_images(path):
    check_test_images(load_config(path), path.name)


@pytest.mark.parametrize("path", ENSEMBLES, ids=lambda p: p.name)
def test_every_ensemble_header_trains_its_members_and_predicts_with_them(path):
    commands = header_commands(path)
    assert any(c[1] in ("train.py", "tools/cycle.py") for c in commands), f"{path.name}: its header trains no member"
    assert any(c[1] == "inference.py" and option(c, "--ensemble") == f"configs/ensembles/{path.name}"
               for c in commands), f"{path.name}: its header never predicts with it"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A config testing on its own training images, a header reading a run nothing trains, and a score on a
    training root without --subset are each caught."""
    shs = "../shared/data/real/shs_net_joints15"
    bad = load_config(ROOT / "configs/keypoints/real_shs15_finetune.yaml", {"data": {"test_root": shs}})
    with pytest.raises(AssertionError, match="are \\(or hold\\) the training images"):
        check_test_images(bad, "bad")
    rsna = load_config(ROOT / "configs/boneage/real_rsna_finetune.yaml",
                       {"data": {"test_csv": "labels.csv", "test_images": "images"}})
    with pytest.raises(AssertionError, match="training images"):
        check_test_images(rsna, "rsna")
    header = tmp_path / "kp_hard.yaml"
    text = (ROOT / "configs/ensembles/kp_hard.yaml").read_text()
    header.write_text(text.replace("#   python train.py -c configs/keypoints/phantom_shs15_shsnet.yaml --data.fold=1\n",
                                   ""))
    with pytest.raises(AssertionError, match="reads runs/keypoints/phantom_shs15_shsnet-f1, which no command"):
        test_header_commands_name_existing_files_and_runs_they_make(header)
    real = (ROOT / "configs/keypoints/real_dha37_finetune.yaml").read_text()
    header.write_text(real.replace(" --subset", ""))
    with pytest.raises(AssertionError, match="scores a validation fold's rows without --subset"):
        test_header_commands_name_existing_files_and_runs_they_make(header)
    header.write_text(real.replace("--data.test_root=NEW", f"--data.test_root={shs.replace('shs_net_joints15', '')}"
                                   "dha_hand_landmarks37"))
    with pytest.raises(AssertionError, match="training images"):
        test_header_commands_name_existing_files_and_runs_they_make(header)
