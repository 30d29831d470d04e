"""Training data path: the decode cache reads an item with one open and no zip archive, an older cache format is
never read, no albumentations pipeline exists when augmentation is off, and the training loader's persistent
workers see every epoch the main process sets."""
from __future__ import annotations

import builtins
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import tasks.cache
from engine.config import load_config
from engine.trainer import train_loader
from tasks.augment import build_augment
from tasks.cache import SampleCache
from tasks.formats.handbones import list_samples
from tasks.spec import task_spec
from tasks.segmentation.task import HandboneDataset

NO_AUGMENT = {"hflip": 0, "vflip": 0, "rotate": 0, "scale": 0, "shift": 0, "brightness_contrast": 0, "gamma": 0,
              "blur": 0, "noise": 0}


def seg_config(phantom: Path, tmp_path: Path, **sections):
    return load_config(None, {"task": "segmentation",
                              "data": {"root": str(phantom / "handbones" / "train"), "image_size": 32, "n_folds": 3,
                                       "cache_dir": str(tmp_path / "cache"), **sections.pop("data", {})},
                              "model": {"name": "smp:unet/resnet18"},
                              "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}, **sections})


def same_items(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_a_cached_item_is_one_open_and_no_zip_archive(phantom, tmp_path, monkeypatch):
    """Nor a stat of its sources: the entry's key is worked out once per process."""
    samples = list_samples(phantom / "handbones" / "train")[:6]
    cache_root = tmp_path / "cache"
    dataset = HandboneDataset(samples, 32, cache=SampleCache(cache_root))
    first = [dataset[i] for i in range(len(dataset))]  # decodes and fills the cache
    entries = sorted(cache_root.rglob(f"*{tasks.cache.SUFFIX}"))
    assert len(entries) == len(samples) and not list(cache_root.rglob("*.npz"))

    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(cache_root)):
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    def no_zip(*args, **kwargs):
        raise AssertionError("the decode cache opened a zip archive")

    def no_stat(self, *args, **kwargs):
        raise AssertionError(f"stat of {self} for a cached item")

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", no_zip)
    monkeypatch.setattr(Path, "stat", no_stat)
    monkeypatch.setattr("tasks.segmentation.task.read_grey", lambda path: pytest.fail(f"decoded {path} again"))
    again = [dataset[i] for i in range(len(dataset))]
    assert sorted(opened) == entries  # one open per item, of its own entry
    assert all(same_items(a, b) for a, b in zip(first, again))


def test_a_damaged_entry_is_made_again_and_a_new_format_reads_no_older_entry(tmp_path, monkeypatch):
    source = tmp_path / "image.png"
    source.write_bytes(b"stands in for a source file")
    made = []

    def make() -> dict[str, np.ndarray]:
        made.append(1)
        return {"image": np.arange(12, dtype=np.uint8).reshape(3, 4), "orig_size": np.array([30, 40])}

    cache = SampleCache(tmp_path / "cache")
    first = cache.get([source], "tag", make)
    (entry,) = (tmp_path / "cache").rglob(f"*{tasks.cache.SUFFIX}")
    assert len(made) == 1 and np.array_equal(cache.get([source], "tag", make)["image"], first["image"])
    assert len(made) == 1
    intact = entry.read_bytes()
    for damaged in (intact[:-5], intact + b"\0", b""):
        entry.write_bytes(damaged)
        again = cache.get([source], "tag", make)
        assert np.array_equal(again["image"], first["image"]) and np.array_equal(again["orig_size"], [30, 40])
        assert entry.read_bytes() == intact
    assert len(made) == 4
    monkeypatch.setattr(tasks.cache, "FORMAT", "some-later-format")
    SampleCache(tmp_path / "cache").get([source], "tag", make)  # the next process, after an upgrade
    assert len(made) == 5 and len(list((tmp_path / "cache").rglob(f"*{tasks.cache.SUFFIX}"))) == 2


def test_cache_entries_round_trip_any_plain_array_and_refuse_objects(tmp_path):
    from tasks.cache import read_arrays, write_arrays

    arrays = {"image": np.arange(60, dtype=np.float32).reshape(6, 10)[::2, 1:6], "empty": np.zeros((0, 2), bool),
              "scalar": np.int64(-7), "names": np.array(["Radius", "Ulna"]), "big": np.arange(1000, dtype=">i4")}
    with open(tmp_path / "e.arrays", "wb") as f:
        write_arrays(f, arrays)
    back = read_arrays(tmp_path / "e.arrays")
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == np.asarray(value).dtype and np.array_equal(back[name], value), name
    back["image"][0, 0] = 99.0  # writable, like a freshly decoded array
    with open(tmp_path / "o.arrays", "wb") as f, pytest.raises(ValueError, match="objects"):
        write_arrays(f, {"o": np.array([{"a": 1}], dtype=object)})


def test_no_albumentations_pipeline_when_augmentation_is_off(phantom, tmp_path, monkeypatch):
    import albumentations as A

    cfg = seg_config(phantom, tmp_path, augment=NO_AUGMENT)
    assert build_augment(cfg.augment) is None and build_augment(cfg.augment, keypoints=True) is None

    def no_pipeline(*args, **kwargs):
        raise AssertionError("an albumentations pipeline was built or run")

    monkeypatch.setattr(A.Compose, "__init__", no_pipeline)
    monkeypatch.setattr(A.Compose, "__call__", no_pipeline)
    train_set, _ = task_spec("segmentation").task_class()(cfg).datasets()
    assert train_set.augment is None
    plain = HandboneDataset(train_set.samples, 32, cache=SampleCache(tmp_path / "cache"))
    for i in range(3):
        assert same_items(train_set[i], plain[i])


def test_persistent_loader_workers_see_every_epoch(phantom, tmp_path):
    cfg = seg_config(phantom, tmp_path, data={"num_workers": 2}, train={"batch_size": 3},
                     augment={"hflip": 0.5, "rotate": 30, "brightness_contrast": 0.5})
    train_set, _ = task_spec("segmentation").task_class()(cfg).datasets()
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = train_loader(train_set, sampler, cfg, pin_memory=False, generator=torch.Generator())
    assert loader.persistent_workers and loader.num_workers == 2
    images = []
    workers = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        batches = list(loader)
        workers.update(w.pid for w in loader._iterator._workers)
        order = list(sampler)
        expected = [train_set[i] for i in order]  # made here, in the main process, at this epoch
        got = torch.cat([b["image"] for b in batches])
        assert [int(i) for b in batches for i in b["index"]] == order
        assert torch.equal(got, torch.stack([e["image"] for e in expected]))
        assert torch.equal(torch.cat([b["masks"] for b in batches]), torch.stack([e["masks"] for e in expected]))
        images.append(got[torch.argsort(torch.as_tensor(order))])
    assert len(workers) == 2  # the same two processes served all three epochs
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
