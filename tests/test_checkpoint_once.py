"""Inference reads a checkpoint once: its config and its weights come from the same read, for one run
(``inference.py --ckpt``) and for every ensemble member."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inference
from engine.checkpoint import Checkpoint, load_checkpoint, open_checkpoint


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every ``torch.load`` of a file, by resolved path (the one reader under ``read_tensors``)."""
    calls: list[Path] = []
    real = torch.load

    def counting(f, *args, **kwargs):
        calls.append(Path(f).resolve())
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_inference_of_one_run_reads_its_checkpoint_once(tiny_run, tmp_path, reads):
    out = tmp_path / "sub.csv"
    assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(out)]) == 0
    assert reads == [(tiny_run / "best.pt").resolve()]
    assert out.read_text().startswith("image_name,class,rle\n")


def test_ensemble_member_checkpoint_is_read_once(tiny_run, tmp_path, reads):
    from ensembles.config import EnsembleConfig
    from ensembles.api import predict_ensemble

    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "soft", "name": "once",
                                         "out_dir": str(tmp_path / "runs"), "members": [{"runs": [str(tiny_run)]}]})
    stats = predict_ensemble(ens, out_csv=tmp_path / "ens.csv", split="test", device="cpu", workers=1,
                                            progress=False)
    assert stats["images"] > 0
    assert reads == [(tiny_run / "best.pt").resolve()]


def test_checkpoint_read_once_builds_the_same_model(tiny_run):
    from engine.predictor import load_model
    from engine.run_folder import checkpoint_config

    ckpt = open_checkpoint(tiny_run / "best.pt")
    assert isinstance(ckpt, Checkpoint) and open_checkpoint(ckpt) is ckpt
    assert Path(ckpt) == tiny_run / "best.pt" and str(ckpt) == str(tiny_run / "best.pt")
    cfg, _ = checkpoint_config(ckpt)
    loaded = load_model(ckpt, torch.device("cpu"), cfg)
    saved = load_checkpoint(tiny_run / "best.pt")["model"]
    own = loaded.model.state_dict()
    assert set(own) == set(saved)
    for key, value in saved.items():
        assert torch.equal(own[key], value), key
    assert loaded.source == tiny_run / "best.pt" and loaded.cfg.model.name == "smp:fpn/resnet18"


def test_a_checkpoint_without_config_is_named(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=f"^{path}: not a harness checkpoint \\(no 'config'\\)$"):
        open_checkpoint(path).config
