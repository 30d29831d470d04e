import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402,F401  (offline environment before any third-party import)

REAL_DATA = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real radiographs (../shared/data/real); skipped on a fresh clone that lacks them."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent (a fresh clone without ../shared/data/real)")
    return REAL_DATA


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """A tiny phantom dataset (all three tasks) shared by the whole session: 24 train / 8 test images at 128 px."""
    from tools.phantom import generate

    out = tmp_path_factory.mktemp("phantom")
    generate(out, n_train=24, n_test=8, size=128, seed=0, workers=2)
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any connection outside loopback."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield
