"""A real OCI registry for tests: Debian's ``docker-registry`` on a free loopback port.

Its config is our own (filesystem storage in a temp dir, no auth); the process is
killed by its pid when the fixture ends. Import ``registry`` into a test module
to use the module-scoped fixture.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REGISTRY_BINARY = Path("/usr/bin/docker-registry")

requires_registry = pytest.mark.skipif(not REGISTRY_BINARY.exists(),
                                       reason="needs /usr/bin/docker-registry (Debian package docker-registry)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:<port>
    storage: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.split(":")[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@contextlib.contextmanager
def running_registry(d: Path, host: str = "127.0.0.1") -> Iterator[Registry]:
    """docker-registry on a free port of ``host`` (loopback, or the lab's own address on its
    network, where the lab's nodes reach it), storing under ``d``; killed by its pid after."""
    port = free_port(host)
    config = d / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}:{port}\n  secret: orch-test-secret\n"
    )
    log = open(d / "registry.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"docker-registry exited with {proc.returncode}: "
                                     f"{(d / 'registry.log').read_text()}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        f"http://{host}:{port}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("docker-registry did not answer on /v2/ within 15 s")
            time.sleep(0.05)
        yield Registry(f"{host}:{port}", d / "data")
    finally:
        os.kill(proc.pid, 9)
        proc.wait()
        log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry on loopback, for the agent's and the image store's own tests."""
    with running_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r
