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

How to prove who we are, with kubeconfig's names (``orchctl lab up`` writes the first three,
the lab's CA and admin certificate)::

    certificateAuthority: /var/lib/orch/lab/pki/ca.crt   # the scheduler's certificate must chain to it
    clientCertificate: /var/lib/orch/lab/pki/admin.crt   # presented to the scheduler: its subject is our user
    clientKey: /var/lib/orch/lab/pki/admin.key
    token: ...                                            # sent as "authorization: Bearer <token>"
    insecure: true                                        # plaintext instead (a lab made with --insecure)

Relative paths are taken from the config file's directory, as kubectl does. Each flag
(``--certificate-authority``, ``--client-certificate``, ``--client-key``, ``--token``,
``--insecure``) beats its field (``resolve_credentials``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from cli.client import ClientTLS

DEFAULT_CONFIG_PATH = Path("~/.orch/config.yaml")
CONFIG_ENV = "ORCHCONFIG"
SERVER_ENV = "ORCH_SERVER"


class ConfigError(Exception):
    """The config file cannot be read, or no cluster is configured at all."""


@dataclass(frozen=True, slots=True)
class Config:
    server: str = ""
    lab_dir: str | None = None
    certificate_authority: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    token: str | None = None
    insecure: bool = False


#: The file's keys for the TLS fields, kubeconfig's spelling (snake_case is accepted too).
_PATH_KEYS = {"certificate_authority": "certificateAuthority", "client_certificate": "clientCertificate",
              "client_key": "clientKey"}


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to connect, once flags, environment and file are weighed: ``tls`` None is plaintext."""

    tls: ClientTLS | None
    token: str | None


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
    paths: dict[str, str | None] = {}
    for field, key in _PATH_KEYS.items():
        value = data.get(key, data.get(field))
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"config {p}: '{key}' must be a file path")
        # Relative to the config file, as kubectl takes them.
        paths[field] = str(p.parent / Path(value).expanduser()) if value else None
    token = data.get("token")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigError(f"config {p}: 'token' must be a non-empty string")
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"config {p}: 'insecure' must be true or false")
    return Config(server=server, lab_dir=lab_dir, token=token, insecure=insecure, **paths)


def save_config(path: Path | str, config: Config) -> None:
    """Write ``config`` to ``path`` atomically (a reader never sees half a file)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, str | bool] = {"server": config.server}
    if config.lab_dir is not None:
        data["labDir"] = config.lab_dir
    for field, key in _PATH_KEYS.items():
        if getattr(config, field) is not None:
            data[key] = getattr(config, field)
    if config.token is not None:
        data["token"] = config.token
    if config.insecure:
        data["insecure"] = True
    # mkstemp makes the file 0600: a config may hold a token.
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


def resolve_credentials(config: Config, *, certificate_authority: str | None = None,
                        client_certificate: str | None = None, client_key: str | None = None,
                        token: str | None = None, insecure: bool = False) -> Credentials:
    """TLS material and token from the flags (each beats its config field), or plaintext when
    ``--insecure`` or the config says so. ConfigError when they contradict each other.

    With neither, the client still speaks TLS, trusting the system's roots and presenting
    no certificate: it never falls back to plaintext by itself (a downgrade anyone on the
    path could force), and the error then says what is missing."""
    flags = {"--certificate-authority": certificate_authority, "--client-certificate": client_certificate,
             "--client-key": client_key}
    if insecure:
        named = [flag for flag, value in flags.items() if value]
        if named:
            raise ConfigError(f"--insecure is plaintext: it cannot be used with {', '.join(named)}")
        return Credentials(None, token or config.token)
    if config.insecure and not any(flags.values()):
        return Credentials(None, token or config.token)

    def pick(flag: str | None, field: str | None) -> Path | None:
        value = flag or field
        return Path(value).expanduser() if value else None

    tls = ClientTLS(pick(certificate_authority, config.certificate_authority),
                    pick(client_certificate, config.client_certificate),
                    pick(client_key, config.client_key))
    return Credentials(tls, token or config.token)
