"""scripts/dev.py's choice of PyTorch build, without the network: the CPU build from PyTorch's CPU wheel index on a
machine without a GPU, the default index (with one line) where that index cannot be reached, the default build
with a GPU, and TRPO_TORCH_INDEX_URL over all of them."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DEV = Path(__file__).resolve().parent.parent / "scripts" / "dev.py"


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", DEV)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("TRPO_TORCH_INDEX_URL", raising=False)
    return module


def machine(monkeypatch: pytest.MonkeyPatch, dev: ModuleType, gpu: bool, reachable: bool) -> list[str]:
    """Pretend a machine: a GPU or not, PyTorch's CPU index reachable or not. Returns the URLs probed."""
    probed: list[str] = []
    monkeypatch.setattr(dev, "has_gpu", lambda: gpu)
    monkeypatch.setattr(dev, "index_reachable", lambda url, timeout=10.0: probed.append(url) or reachable)
    return probed


def test_without_a_gpu_the_cpu_build_comes_from_pytorchs_cpu_index(monkeypatch: pytest.MonkeyPatch,
                                                                   dev: ModuleType) -> None:
    probed = machine(monkeypatch, dev, gpu=False, reachable=True)
    assert dev.torch_install() == (["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"], None)
    assert probed == ["https://download.pytorch.org/whl/cpu/torch/"]


def test_an_unreachable_cpu_index_falls_back_to_the_default_index_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                                dev: ModuleType) -> None:
    machine(monkeypatch, dev, gpu=False, reachable=False)
    args, note = dev.torch_install()
    assert args == ["torch==2.13.0"]
    assert note is not None and "\n" not in note and "cannot be reached" in note and "default index" in note


def test_with_a_gpu_the_default_build_and_no_probe(monkeypatch: pytest.MonkeyPatch, dev: ModuleType) -> None:
    probed = machine(monkeypatch, dev, gpu=True, reachable=True)
    assert dev.torch_install() == (["torch>=2.4,<3"], None)
    assert probed == []


def test_an_index_given_by_the_user_wins(monkeypatch: pytest.MonkeyPatch, dev: ModuleType) -> None:
    machine(monkeypatch, dev, gpu=True, reachable=False)
    monkeypatch.setenv("TRPO_TORCH_INDEX_URL", "https://example.invalid/simple")
    assert dev.torch_install() == (["torch", "--index-url", "https://example.invalid/simple"], None)


def test_setup_prints_the_fallback_line_and_installs_torch_before_trpo(monkeypatch: pytest.MonkeyPatch,
                                                                      dev: ModuleType, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    machine(monkeypatch, dev, gpu=False, reachable=False)
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(dev, "VENV", tmp_path / "venv")
    monkeypatch.setattr(dev, "venv_python", lambda: tmp_path)  # exists: no venv is made
    monkeypatch.setattr(dev, "torch_installed", lambda py: False)
    monkeypatch.setattr(dev, "run", lambda *cmd: commands.append(tuple(map(str, cmd))))
    dev.setup("test")
    assert [cmd[-1] for cmd in commands] == ["torch==2.13.0", ".[test]"]
    assert capsys.readouterr().out.count("cannot be reached") == 1


@pytest.fixture
def local_server() -> Iterator[str]:
    """An HTTP server on the loopback interface: 200 for /ok/, 404 elsewhere."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200 if self.path == "/ok/" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_index_reachable_asks_the_server(dev: ModuleType, local_server: str) -> None:
    assert dev.index_reachable(f"{local_server}/ok/", timeout=5)
    assert dev.index_reachable(f"{local_server}/missing/", timeout=5)  # it answers: the index is there
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not dev.index_reachable(f"http://127.0.0.1:{port}/", timeout=5)
    assert not dev.index_reachable("not a url", timeout=5)
