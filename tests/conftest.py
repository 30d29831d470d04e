import os
import pickle
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
# pytest imports this checkout (pyproject: pythonpath = ["."]); commands the tests start in subprocesses
# (tools/*.py, train.py) must too, whichever checkout the venv's editable install points at.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import engine  # noqa: E402,F401  (offline environment before any third-party import)

REAL_DATA = ROOT.parent / "shared" / "data" / "real"

# The fuzz tests (Hypothesis, tests/test_fuzz_*.py): `bounded`, the default, is reproducible (derandomized) and
# keeps them all well under a minute; `pytest --hypothesis-profile=long tests/test_fuzz_*.py` searches far more
# examples on a local machine. No example database: nothing is written into the checkout.
settings.register_profile("bounded", max_examples=50, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bounded")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reads the shared real radiographs (through the real_data fixture) ``real_data``, so
    ``-m "not real_data"`` (make test-fast) deselects them; the marker is registered in pyproject.toml."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real radiographs (../shared/data/real); skipped on a fresh clone that lacks them."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent (a fresh clone without ../shared/data/real)")
    return REAL_DATA


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """A tiny phantom dataset (all three tasks) shared by the whole session: 24 train / 8 test images at 128 px."""
    from phantom import generate

    out = tmp_path_factory.mktemp("phantom")
    generate(out, n_train=24, n_test=8, size=128, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_run(phantom, tmp_path_factory) -> Path:
    """A segmentation run trained for two steps on the phantom (64 px): its folder, with best.pt and summary.json."""
    from engine.config import load_config
    from engine.trainer import train

    out = tmp_path_factory.mktemp("infer")
    cfg = load_config(None, {
        "task": "segmentation", "name": "inf",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 3, "cache_dir": str(out / "cache")},
        "model": {"name": "smp:fpn/resnet18"},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })
    train(cfg)
    return cfg.run_dir


@pytest.fixture(scope="session")
def tensorboard_scalars():
    """Read back a TensorBoard log folder: ``read(folder) -> {tag: [(step, value), ...]}`` (TensorBoard's own reader,
    which also drops the events a resumed writer purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(folder: Path) -> dict[str, list[tuple[int, float]]]:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    return read


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any connection or DNS lookup outside loopback, even one the code under test catches.

    Yields the list of attempts; each attempt also raises AssertionError where it happens.
    """
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(what: str, host, address) -> None:
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1", "")
                                          or host.startswith("/")):
            attempts.append(f"{what} {address}")
            raise AssertionError(f"network access attempted: {what} {address}")

    def guarded(self, address):
        check("connect", address[0] if isinstance(address, tuple) else address, address)
        return real_connect(self, address)

    def guarded_ex(self, address):
        check("connect", address[0] if isinstance(address, tuple) else address, address)
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        check("DNS lookup of", host, host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert not attempts, f"network access attempted (some caught by the code under test): {attempts}"


class _Planted:
    """Unpickled, it makes the folder ``path``: a stand-in for any code a crafted pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


class PlantedFiles:
    """Crafted pickles for tests that no file is ever unpickled: loading one would make ``marker``."""

    def __init__(self, folder: Path) -> None:
        self.marker = folder / "planted-code-ran"

    def write(self, path: Path, raw: bool = False) -> Path:
        """A torch archive (as torch.save and ultralytics write them) or, with ``raw``, a bare pickle."""
        import torch

        if raw:
            path.write_bytes(pickle.dumps(_Planted(self.marker)))
        else:
            torch.save({"model": _Planted(self.marker), "ema": _Planted(self.marker)}, path)
        return path


@pytest.fixture
def planted(tmp_path) -> PlantedFiles:
    return PlantedFiles(tmp_path)
