"""Where ``orchctl`` finds its cluster: a small YAML file, like a one-context kubeconfig.

The file (``~/.orch/config.yaml`` unless ``--config`` or ``$ORCHCONFIG`` says
otherwise) holds the scheduler address and, when ``orchctl lab up`` wrote it, the
lab directory, so ``lab status`` and ``lab down`` find the lab without ``--dir``::

    server: 127.0.0.1:7443
    labDir: /var/lib/orch/lab

With several schedulers, ``server`` names them all, comma-separated; ``orchctl``
uses the first that answers (cli/client.py)::

    server: 127.0.0.1:7443,127.0.0.1:7444

``--server`` beats ``$ORCH_SERVER``, which beats the file (``resolve_server``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_CONFIG_PATH = Path("~/.orch/config.yaml")
CONFIG_ENV = "ORCHCONFIG"
SERVER_ENV = "ORCH_SERVER"


class ConfigError(Exception):
    """The config file cannot be read, or no cluster is configured at all."""


@dataclass(frozen=True, slots=True)
class Config:
    server: str = ""
    lab_dir: str | None = None


def config_path(flag: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$ORCHCONFIG``, else ``~/.orch/config.yaml``."""
    env = os.environ if environ is None else environ
    raw = flag or env.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)
    return Path(raw).expanduser()


def load_config(path: Path | str) -> Config:
    """The config at ``path``; an empty ``Config`` when the file does not exist."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p} is not valid YAML: {e}") from e
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping with a 'server' key")
    server = data.get("server") or ""
    # Accept the snake_case spelling too: people write these files by hand.
    lab_dir = data.get("labDir", data.get("lab_dir"))
    if not isinstance(server, str) or (lab_dir is not None and not isinstance(lab_dir, str)):
        raise ConfigError(f"config {p}: 'server' and 'labDir' must be strings")
    return Config(server=server, lab_dir=lab_dir)


def save_config(path: Path | str, config: Config) -> None:
    """Write ``config`` to ``path`` atomically (a reader never sees half a file)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, str] = {"server": config.server}
    if config.lab_dir is not None:
        data["labDir"] = config.lab_dir
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_server(flag: str | None, config: Config, environ: Mapping[str, str] | None = None) -> str:
    """The scheduler address to talk to, or ``ConfigError`` saying how to get one."""
    env = os.environ if environ is None else environ
    server = flag or env.get(SERVER_ENV) or config.server
    if not server:
        raise ConfigError('no cluster configured: run "orchctl lab up" or pass --server')
    return server
