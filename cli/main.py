"""``orchctl``: the command line of orch, with kubectl's verbs, flags and output.

    orchctl apply -f FILE|DIR|- [-R] [--dry-run[=client|server]] [-o json|yaml|name]
    orchctl get KIND [NAME...] [-A] [-l SELECTOR] [-o wide|json|yaml|name] [-w [--watch-timeout S]]
    orchctl describe KIND [NAME...] [-A] [-l SELECTOR]
    orchctl delete (KIND NAME... | KIND -l SELECTOR | KIND --all | -f FILE|DIR|-) [--grace-period N]
                   [--wait|--no-wait] [--timeout S] [--ignore-not-found]
    orchctl logs POD [-c CONTAINER] [-f] [--tail N] [-p|--previous] [--timestamps] [--since DURATION]
    orchctl exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARG...]
    orchctl cordon|uncordon NODE; orchctl drain NODE [--force] [--grace-period N] [--timeout DURATION]
    orchctl scale deployment/NAME --replicas N
    orchctl top nodes|pods [-n NS | -A] [--containers]
    orchctl rollout status|history|undo|restart deployment/NAME [--timeout D] [--revision N] [--to-revision N]
    orchctl lab up [--nodes N] [--schedulers N] [--dir DIR] [--apply FILE] | lab down [--dir DIR]
    orchctl lab status [-o json]
    orchctl pki init|issue|rotate|show ...      (the cluster's certificates: cli/pki.py)

Global options go before or after the verb: ``--server HOST:PORT``, ``--config
PATH``, ``-n NAMESPACE``, ``--request-timeout S``, ``-v``; and how to connect, with
kubectl's names: ``--certificate-authority FILE``, ``--client-certificate FILE``,
``--client-key FILE``, ``--token TOKEN`` (each beats its field in the config,
cli/config.py), or ``--insecure`` for plaintext (with a warning on stderr). A failed TLS
handshake is one error line saying who refused whom (exit 1).

Exit codes: 0 success, 1 an error (printed to stderr as ``error: …``), 2 a usage
error, 130 interrupted; ``exec`` exits with the command's own exit code. Output meant for people (progress while waiting) goes to
stderr and only when stderr is a terminal, so pipes see nothing but the result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import queue
import re
import signal
import sys
import termios
import threading
import time
import tty as ttymod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

# gRPC's C core logs a failed TLS handshake on stderr itself (and at INFO by default); orchctl
# says what went wrong in one error line instead (cli/client.py, tls_failure). The setting is
# read when grpc loads, and taken out of the environment again so that the processes
# `lab up` starts log as they would.
if "GRPC_VERBOSITY" not in os.environ:
    os.environ["GRPC_VERBOSITY"] = "NONE"
    import grpc  # noqa: F401
    del os.environ["GRPC_VERBOSITY"]

from apimachinery.errors import ConflictError, ExpiredError, NotFoundError, OrchError, UnavailableError
from apimachinery.meta import KINDS, Kind, Obj, kind_for
from cli import manifests, printers, rollout, safe
from cli.client import DEFAULT_TIMEOUT, ClusterClient
from cli.config import Config, ConfigError, config_path, load_config, resolve_credentials, resolve_server, save_config

log = logging.getLogger(__name__)

PROG = "orchctl"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_NAMESPACE = "default"
DEFAULT_DELETE_TIMEOUT = 120.0
DEFAULT_LAB_WAIT_TIMEOUT = 300.0
POLL_INTERVAL = 0.5


class CliError(Exception):
    """A failure to report as ``error: <message>`` with exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """Arguments that argparse accepted but that make no sense together (exit 2)."""

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message, EXIT_USAGE)
        self.command = command


class _Parser(argparse.ArgumentParser):
    """argparse with kubectl's way of reporting usage errors: ``error: …`` and a hint, exit 2."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"argument (?:COMMAND|up\|down\|status): invalid choice: '([^']*)'", message)
        if unknown:
            message = f'unknown command "{unknown.group(1)}" for "{self.prog}"'
        sys.stderr.write(f"error: {message}\nSee '{self.prog} -h' for help and examples.\n")
        raise SystemExit(EXIT_USAGE)


# --- argument parsing ------------------------------------------------------------


def _add_global_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options kubectl accepts anywhere on the line.

    They are defined on the top-level parser and again on every subcommand; on the
    subcommands their default is SUPPRESS, so that ``orchctl --server X get pods``
    is not undone by the subcommand's own default.
    """
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("global options")
    g.add_argument("--server", metavar="HOST:PORT[,...]", default=default(None),
                   help="the scheduler to talk to, or several replicas comma-separated, tried in turn "
                        "(default: $ORCH_SERVER, then the config file)")
    g.add_argument("--config", metavar="PATH", default=default(None),
                   help="config file (default: $ORCHCONFIG, then ~/.orch/config.yaml)")
    g.add_argument("-n", "--namespace", metavar="NAMESPACE", default=default(None),
                   help="namespace of the objects (default: default)")
    g.add_argument("--request-timeout", metavar="SECONDS", type=_positive_float, default=default(DEFAULT_TIMEOUT),
                   help="how long to wait for one API call")
    g.add_argument("--certificate-authority", metavar="FILE", default=default(None),
                   help="the CA bundle the scheduler's certificate must be signed by (default: the config's "
                        "certificateAuthority)")
    g.add_argument("--client-certificate", metavar="FILE", default=default(None),
                   help="our certificate, presented to the scheduler: its subject is who we are (default: the "
                        "config's clientCertificate)")
    g.add_argument("--client-key", metavar="FILE", default=default(None),
                   help="the key of --client-certificate (default: the config's clientKey)")
    g.add_argument("--token", metavar="TOKEN", default=default(None),
                   help="a bearer token sent with every request (default: the config's token)")
    g.add_argument("--insecure", action="store_true", default=default(False),
                   help="plaintext, no TLS: only for a cluster started with --insecure (lab up --insecure makes one)")
    g.add_argument("-v", "--verbose", action="count", default=default(0), help="debug logging to stderr")


def _positive_float(text: str) -> float:
    try:
        value = float(text.rstrip("s"))  # kubectl spells durations "120s"; a bare number works too
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds, like 30 or 30s") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be a finite number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def _duration(text: str) -> float:
    """Seconds in a Go-style duration: ``30s``, ``5m``, ``1h30m``, ``1.5h`` (a bare number is seconds)."""
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m") from None
        value = sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be a finite number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Control an orch cluster, the way kubectl controls Kubernetes.")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _Parser(add_help=False)
    _add_global_options(common, suppress=True)

    p = sub.add_parser("apply", parents=[common], help="create or update objects from files",
                       description="Create or update every object in the files, all validated before any is written.")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
                   help="a manifest file, a directory of them, or - for stdin (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true", help="read directories recursively")
    p.add_argument("--dry-run", nargs="?", const="server", default="none", choices=["none", "client", "server"],
                   help="server (the default for a bare --dry-run): the server validates everything and shows "
                        "what would change, writing nothing; client: no validation, only whether each object "
                        "would be created or configured")
    p.add_argument("-o", "--output", choices=["json", "yaml", "name"], help="print the applied objects")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", parents=[common], help="list objects",
                       usage=f"{PROG} get KIND [NAME...] | KIND/NAME... [options]",
                       description="Print a table of objects (pods, deployments, nodes).")
    p.add_argument("targets", nargs="*", metavar="KIND [NAME...]",
                   help="pods|pod|po, deployments|deployment|deploy, nodes|node|no; or KIND/NAME")
    _add_all_namespaces(p)
    p.add_argument("-l", "--selector", default="", metavar="SELECTOR", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("-o", "--output", default="table", choices=["table", "wide", "json", "yaml", "name"])
    p.add_argument("--no-headers", action="store_true", help="leave out the table header")
    p.add_argument("-w", "--watch", action="store_true", help="after the list, print a row for every change")
    p.add_argument("--watch-timeout", type=_positive_float, metavar="SECONDS",
                   help="stop watching after this long (default: until interrupted)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("describe", parents=[common], help="show an object in detail",
                       usage=f"{PROG} describe KIND [NAME...] | KIND/NAME... [options]")
    p.add_argument("targets", nargs="*", metavar="KIND [NAME...]",
                   help="KIND and names (a name that matches nothing is tried as a prefix)")
    _add_all_namespaces(p)
    p.add_argument("-l", "--selector", default="", metavar="SELECTOR")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("delete", parents=[common], help="delete objects and wait until they are gone",
                       usage=f"{PROG} delete (KIND NAME... | KIND/NAME... | KIND -l SELECTOR | KIND --all "
                             "| -f FILE|DIR|-) [options]")
    p.add_argument("targets", nargs="*", metavar="KIND [NAME...]")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-",
                   help="delete every object named in these manifests")
    p.add_argument("-R", "--recursive", action="store_true", help="read directories recursively")
    p.add_argument("-l", "--selector", default="", metavar="SELECTOR")
    p.add_argument("--all", action="store_true", help="every object of KIND in the namespace")
    p.add_argument("--grace-period", type=_non_negative_int, metavar="SECONDS",
                   help="seconds a pod gets to stop (default: its terminationGracePeriodSeconds)")
    p.add_argument("--now", action="store_true", help="same as --grace-period=1")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="wait until the objects are gone (default: wait)")
    p.add_argument("--timeout", type=_positive_float, default=DEFAULT_DELETE_TIMEOUT, metavar="SECONDS",
                   help="how long --wait waits")
    p.add_argument("--ignore-not-found", action="store_true", help="an object that does not exist is no error")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("logs", parents=[common], help="print the logs of a container in a pod",
                       usage=f"{PROG} logs POD [-c CONTAINER] [options]",
                       description="Print a container's output (stdout and stderr), as kept on its node.")
    p.add_argument("pod", metavar="POD", help="the pod's name, or pod/NAME")
    p.add_argument("-c", "--container", default="", help="the container (default: the pod's only one)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the container exits")
    p.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines (default -1: all)")
    p.add_argument("-p", "--previous", action="store_true",
                   help="the previous instance of the container (before its last restart)")
    p.add_argument("--timestamps", action="store_true", help="prefix every line with its RFC3339 timestamp")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="only lines newer than this, e.g. 10s, 5m, 1h30m")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("image", parents=[common], help="manage the nodes' images",
                       description="Images on the nodes.")
    image_sub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    q = image_sub.add_parser("import", parents=[common], help="import an image archive into the nodes",
                             usage=f"{PROG} image import FILE [--node NODE] [--reference REF]",
                             description="Import an OCI image layout (as a tar), an OCI archive or a "
                                         "`docker save` tarball into every Ready node's image store, or one "
                                         "node's. Every blob is verified; a node keeps nothing of a bad archive.")
    q.add_argument("file", metavar="FILE", help="the archive")
    q.add_argument("--node", default="", help="import into this node only")
    q.add_argument("--reference", default="", metavar="REF",
                   help="name an image the archive leaves unnamed, e.g. busybox:local")
    q.set_defaults(func=cmd_image_import)

    p = sub.add_parser("exec", parents=[common], help="run a command in a container",
                       usage=f"{PROG} exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARG...]",
                       description="Run a command in a running container; exit with its exit code.")
    p.add_argument("pod", metavar="POD", help="the pod's name, or pod/NAME")
    p.add_argument("exec_argv", nargs="*", metavar="COMMAND", help="after --: the command and its arguments")
    p.add_argument("-c", "--container", default="", help="the container (default: the pod's only one)")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="run the command on a terminal (with -i: interactive)")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("cordon", parents=[common], help="mark a node unschedulable",
                       usage=f"{PROG} cordon NODE")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=cmd_cordon, unschedulable=True)
    p = sub.add_parser("uncordon", parents=[common], help="mark a node schedulable again",
                       usage=f"{PROG} uncordon NODE")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=cmd_cordon, unschedulable=False)
    p = sub.add_parser("drain", parents=[common], help="cordon a node and evict its pods",
                       usage=f"{PROG} drain NODE [--force] [--grace-period N] [--timeout DURATION]",
                       description="Cordon the node, then delete every pod on it gracefully and wait until they "
                                   "are gone. Pods that declare no controller (nothing would re-create them) "
                                   "are refused unless --force is given.")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--force", action="store_true", help="also delete pods that declare no controller")
    p.add_argument("--grace-period", type=int, default=-1, metavar="SECONDS",
                   help="seconds each pod gets to stop (default -1: its terminationGracePeriodSeconds)")
    p.add_argument("--timeout", type=_duration, default=0.0, metavar="DURATION",
                   help="give up after this long, e.g. 60s (default 0: wait for ever)")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("scale", parents=[common], help="set a Deployment's number of replicas",
                       usage=f"{PROG} scale deployment/NAME --replicas N")
    p.add_argument("targets", nargs="+", metavar="deployment/NAME")
    p.add_argument("--replicas", type=_non_negative_int, required=True, metavar="N")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("top", parents=[common], help="CPU and memory of nodes or pods, as kubectl top",
                       usage=f"{PROG} top nodes|pods [-n NS | -A] [--containers]")
    p.add_argument("what", choices=("nodes", "node", "no", "pods", "pod", "po"), metavar="nodes|pods")
    p.add_argument("--containers", action="store_true", help="pods: one line per container")
    _add_all_namespaces(p)
    p.set_defaults(func=cmd_top)

    rollout = sub.add_parser("rollout", parents=[common], help="manage the rollout of a Deployment",
                             description="Watch, list, undo or restart the rollouts of a Deployment.")
    rollout_sub = rollout.add_subparsers(dest="rollout_command", metavar="status|history|undo|restart",
                                         required=True)
    p = rollout_sub.add_parser("status", parents=[common], help="wait until the rollout is complete",
                               usage=f"{PROG} rollout status deployment/NAME [--timeout DURATION] [-w=false]")
    p.add_argument("targets", nargs="+", metavar="deployment/NAME")
    p.add_argument("--timeout", type=_duration, default=0.0, metavar="DURATION",
                   help="give up after this long, exit 1 (default 0: wait for ever)")
    p.add_argument("-w", "--watch", type=lambda t: t.lower() not in ("false", "0", "no"), default=True,
                   metavar="true|false", help="wait for the rollout to finish (default true)")
    p.set_defaults(func=cmd_rollout_status)
    p = rollout_sub.add_parser("history", parents=[common], help="list the revisions",
                               usage=f"{PROG} rollout history deployment/NAME [--revision N]")
    p.add_argument("targets", nargs="+", metavar="deployment/NAME")
    p.add_argument("--revision", type=_non_negative_int, default=0, help="show the pod template of this revision")
    p.set_defaults(func=cmd_rollout_history)
    p = rollout_sub.add_parser("undo", parents=[common], help="go back to an earlier revision",
                               usage=f"{PROG} rollout undo deployment/NAME [--to-revision N]")
    p.add_argument("targets", nargs="+", metavar="deployment/NAME")
    p.add_argument("--to-revision", type=_non_negative_int, default=0,
                   help="the revision to go back to (default 0: the previous one)")
    p.set_defaults(func=cmd_rollout_undo)
    p = rollout_sub.add_parser("restart", parents=[common], help="replace every pod, one step at a time",
                               usage=f"{PROG} rollout restart deployment/NAME")
    p.add_argument("targets", nargs="+", metavar="deployment/NAME")
    p.set_defaults(func=cmd_rollout_restart)

    lab = sub.add_parser("lab", parents=[common], help="run a whole cluster on this machine",
                         description="Start, inspect or tear down a lab cluster: etcd, a scheduler, N agents, "
                                     "each agent in a network namespace of its own on a lab bridge.")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="up|down|status", required=True)
    p = lab_sub.add_parser("up", parents=[common], help="start a lab cluster and point the config at it")
    p.add_argument("--nodes", type=_positive_int, default=2, help="number of agents (default 2)")
    p.add_argument("--schedulers", type=_positive_int, default=1,
                   help="number of schedulers (default 1); with more, they elect a leader and the agents and "
                        "the config get every address")
    p.add_argument("--dir", type=Path, help="lab directory (default /var/lib/orch/lab)")
    p.add_argument("--apply", type=Path, metavar="FILE", help="apply this manifest and wait for its pods")
    p.add_argument("--timeout", type=_positive_float, default=DEFAULT_LAB_WAIT_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for the pods of --apply to be Running")
    p.set_defaults(func=cmd_lab_up)
    p = lab_sub.add_parser("down", parents=[common], help="stop the lab and remove every trace of it")
    p.add_argument("--dir", type=Path, help="lab directory (default: from the config, else /var/lib/orch/lab)")
    p.set_defaults(func=cmd_lab_down)
    p = lab_sub.add_parser("status", parents=[common], help="show the lab's processes")
    p.add_argument("--dir", type=Path, help="lab directory (default: from the config, else /var/lib/orch/lab)")
    p.add_argument("-o", "--output", default="table", choices=["table", "json"])
    p.set_defaults(func=cmd_lab_status)

    from cli import pki as pki_cli  # its verbs' arguments; cryptography is imported only when one runs
    p = sub.add_parser("pki", parents=[common], help="create, rotate and list the cluster's certificates",
                       description="The cluster PKI: a CA, the scheduler's, agents', admin's and etcd's "
                                   "certificates (docs/security.md).")
    pki_cli.add_arguments(p, common)
    p.set_defaults(func=cmd_pki)
    return parser


def _add_all_namespaces(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help="objects in every namespace")


# --- session: config, client, output ---------------------------------------------


class Session:
    """What every command needs: parsed arguments, the config, and a client made on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config_path = config_path(args.config)
        self._config: Config | None = None
        self.server: str | None = None
        self._client: ClusterClient | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def client(self) -> ClusterClient:
        if self._client is None:
            self.server = resolve_server(self.args.server, self.config)
            log.debug("using cluster at %s", self.server)
            self._client = self._make_client(self.server, self.config)
        return self._client

    def connect(self, server: str, config: Config) -> ClusterClient:
        """Use ``server`` with ``config``'s credentials from now on (``lab up`` knows its
        address and certificates before any config file does)."""
        self.close()
        self.server = server
        self._client = self._make_client(server, config)
        return self._client

    def _make_client(self, server: str, config: Config) -> ClusterClient:
        a = self.args
        credentials = resolve_credentials(config, certificate_authority=a.certificate_authority,
                                          client_certificate=a.client_certificate, client_key=a.client_key,
                                          token=a.token, insecure=a.insecure)
        if credentials.tls is None:
            warn_plaintext(server)
        return ClusterClient(server, timeout=a.request_timeout, tls=credentials.tls, token=credentials.token)

    @property
    def namespace(self) -> str:
        return self.args.namespace or DEFAULT_NAMESPACE

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def warn_plaintext(server: str) -> None:
    err(f"warning: --insecure: talking to {server} in plaintext, without TLS: anyone on the path can read "
        "and change what is sent, and whoever serves that address is trusted")


def out(text: str = "") -> None:
    # Escaped whatever the output: names are safe, but messages, annotations and
    # events can hold terminal escapes (cli/safe.py; JSON and YAML keep their meaning).
    sys.stdout.write(safe.escape_terminal(text) + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(safe.escape_terminal(text) + "\n")
    sys.stderr.flush()


class Progress:
    """One self-rewriting status line on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream)
        self._width = 0

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- targets: KIND NAME..., KIND/NAME ---------------------------------------------


def resolve_kind(word: str) -> Kind:
    kind = KINDS.get(word) or kind_for(word)
    if kind is None:
        raise CliError(f'the server doesn\'t have a resource type "{word}"')
    return kind


def parse_targets(words: Sequence[str], command: str) -> tuple[Kind, list[str]] | list[tuple[Kind, str]]:
    """``KIND [NAME...]`` as ``(kind, names)``, or ``KIND/NAME...`` as ``[(kind, name)]``."""
    if not words:
        raise UsageError(f"you must specify the type of resource to {command}, "
                         "one of: pods (po), deployments (deploy), nodes (no)", command)
    if "/" in words[0]:
        pairs: list[tuple[Kind, str]] = []
        for w in words:
            kind_word, sep, name = w.partition("/")
            if not sep or not name or "/" in name:
                raise UsageError(f"there is no need to specify a resource type as a separate argument when "
                                 f"passing arguments in resource/name form (e.g. '{PROG} {command} pod/hello' "
                                 f"instead of '{PROG} {command} pod hello'): {w!r}", command)
            pairs.append((resolve_kind(kind_word), name))
        return pairs
    return resolve_kind(words[0]), list(words[1:])


def _namespace_for(kind: Kind, session: Session) -> str:
    return session.namespace if kind.namespaced else ""


# --- apply -------------------------------------------------------------------------


def prepare_documents(docs: Sequence[manifests.Document], namespace: str | None) -> list[Obj]:
    """The objects to send: copies, with ``metadata.namespace`` filled in for namespaced kinds.

    A document that names a namespace other than an explicit ``-n`` is refused, as
    kubectl refuses it: applying it anyway would put it somewhere the user did not say.
    """
    objects: list[Obj] = []
    for doc in docs:
        obj = copy.deepcopy(doc.obj)
        kind_word = obj.get("kind")
        kind = kind_for(kind_word) if isinstance(kind_word, str) else None
        md = obj.get("metadata")
        # Anything malformed here (no metadata, an unknown kind) is left for the server,
        # whose validation names every problem with its field path.
        if isinstance(md, dict) and (kind is None or kind.namespaced):
            ns = md.get("namespace")
            if ns and namespace and ns != namespace:
                raise CliError(f'{doc.where}: the namespace from the provided object "{ns}" does not match the '
                               f'namespace "{namespace}". You must pass \'--namespace={ns}\' to perform this '
                               "operation.")
            if not ns:
                md["namespace"] = namespace or DEFAULT_NAMESPACE
        objects.append(obj)
    return objects


_DOC_REF = re.compile(r"(?<![\w.])document (\d+)(?= \(|:|;|$)")
_DOC_SPLIT = re.compile(r"; (?=document \d+ \()")


def translate_document_refs(message: str, docs: Sequence[manifests.Document]) -> list[str]:
    """The server's ``document N (Kind/name): …`` errors, one per line, with N turned into a file and position.

    The server numbers documents by their 0-based place in the request; the user
    needs ``pods.yaml document 2``.
    """
    def where(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return docs[i].where if 0 <= i < len(docs) else m.group(0)

    return [_DOC_REF.sub(where, part) for part in _DOC_SPLIT.split(message)]


def conflict_message(e: ConflictError, kind: Kind | str | None = None, name: str | None = None) -> str:
    """kubectl's wording for a lost compare-and-swap, keeping the server's text."""
    text = str(e).strip()
    if text.startswith("Operation cannot be fulfilled"):
        return text
    detail = text or "the object has been modified; please apply your changes to the latest version and try again"
    if kind is not None and name:
        return f'Operation cannot be fulfilled on {printers.resource_plural(kind)} "{name}": {detail}'
    return f"Operation cannot be fulfilled: {detail}"


def _print_objects(objects: Sequence[Obj], output: str, *, single: bool) -> None:
    if output == "name":
        for o in objects:
            out(printers.object_name(o))
        return
    payload: Any = objects[0] if single and len(objects) == 1 else printers.as_list(objects)
    out(printers.to_json(payload) if output == "json" else safe.to_yaml(payload))


def apply_documents(session: Session, docs: Sequence[manifests.Document], *, dry_run: str = "none",
                    output: str | None = None) -> list[tuple[str, Obj]]:
    """Apply ``docs`` in one request and print kubectl's lines; the results, for callers that wait on them."""
    if not docs:
        raise CliError("no objects passed to apply")
    objects = prepare_documents(docs, session.args.namespace)
    client = session.client
    if dry_run == "client":
        results = [(_client_dry_run_action(client, o), o) for o in objects]
    else:
        try:
            results = client.apply(objects, dry_run=dry_run == "server")
        except ConflictError as e:
            only = objects[0] if len(objects) == 1 else None
            kind = str(only.get("kind")) if only else None
            name = str((only.get("metadata") or {}).get("name")) if only else None
            raise CliError(conflict_message(e, kind, name)) from e
        except OrchError as e:
            # Validation (or any error) that names documents: say which file they came from.
            if isinstance(e, UnavailableError):
                raise
            lines = translate_document_refs(str(e), docs)
            raise CliError("\nerror: ".join(lines)) from e
    suffix = {"none": "", "client": " (dry run)", "server": " (server dry run)"}[dry_run]
    if output:
        _print_objects([o for _, o in results], output, single=True)
    else:
        for action, obj in results:
            out(f"{printers.object_name(obj)} {action}{suffix}")
            if dry_run == "server" and action == "configured":
                for line in _would_change(client, obj):
                    out(f"  {line}")
    return results


def _would_change(client: ClusterClient, new: Obj) -> list[str]:
    """The fields a dry-run apply would change, ``path: old -> new``, from the live object."""
    kind = kind_for(str(new.get("kind", "")))
    md = printers.metadata(new)
    if kind is None:
        return []
    try:
        live = client.get(kind.kind, str(md.get("name")), str(md.get("namespace", "")) if kind.namespaced else "")
    except NotFoundError:
        return []
    changes: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(f"{path}.{key}" if path else str(key), a.get(key), b.get(key))
        elif a != b:
            changes.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")

    for section in ("metadata.labels", "metadata.annotations", "spec"):
        head, _, tail = section.partition(".")
        a, b = live.get(head, {}), new.get(head, {})
        if tail:
            a, b = (a or {}).get(tail), (b or {}).get(tail)
        walk(section, a, b)
    return changes


def _client_dry_run_action(client: ClusterClient, obj: Obj) -> str:
    """What applying ``obj`` would be called, from a read: kubectl's client dry run does the same."""
    kind = kind_for(str(obj.get("kind", "")))
    md = printers.metadata(obj)
    name = md.get("name")
    if kind is None or not name:
        return "created"
    try:
        client.get(kind.kind, str(name), str(md.get("namespace", "")) if kind.namespaced else "")
    except NotFoundError:
        return "created"
    return "configured"


def cmd_apply(session: Session) -> int:
    args = session.args
    docs = manifests.load(args.filename, recursive=args.recursive)
    apply_documents(session, docs, dry_run=args.dry_run, output=args.output)
    return EXIT_OK


# --- get -----------------------------------------------------------------------------


def _sort_key(obj: Obj) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return str(md.get("namespace", "")), str(md.get("name", ""))


def _no_resources(kind: Kind, namespace: str) -> str:
    if kind.namespaced and namespace:
        return f"No resources found in {namespace} namespace."
    return "No resources found"


def cmd_get(session: Session) -> int:
    args = session.args
    targets = parse_targets(args.targets, "get")
    if isinstance(targets, list):
        kinds = {k.kind for k, _ in targets}
        if len(kinds) > 1:
            raise UsageError("get with KIND/NAME arguments takes one kind at a time", "get")
        kind, names = targets[0][0], [n for _, n in targets]
    else:
        kind, names = targets
    if names and args.selector:
        raise UsageError("a NAME cannot be given together with a selector (-l)", "get")
    if names and args.all_namespaces:
        raise UsageError("a NAME cannot be given together with -A/--all-namespaces", "get")
    all_ns = bool(args.all_namespaces and kind.namespaced)
    namespace = "" if all_ns else _namespace_for(kind, session)
    client = session.client
    failed: list[str] = []
    if names:
        items: list[Obj] = []
        for name in names:
            try:
                items.append(client.get(kind.kind, name, namespace))
            except NotFoundError:
                failed.append(printers.not_found_message(kind, name))
        _, rv = client.list(kind.kind, namespace) if args.watch else ([], 0)
    else:
        items, rv = client.list(kind.kind, namespace, args.selector)
        items.sort(key=printers.event_sort_key if kind.kind == "Event" else _sort_key)

    opts = printers.TableOptions(wide=args.output == "wide", all_namespaces=all_ns, now=printers.utcnow())
    writer = printers.TableWriter()
    header_printed = False

    def print_rows(objs: Sequence[Obj]) -> None:
        nonlocal header_printed
        # A fresh clock for every batch: a row printed by --watch minutes later shows its real age.
        now_opts = printers.TableOptions(wide=opts.wide, all_namespaces=opts.all_namespaces, now=printers.utcnow())
        rows = [printers.table_row(kind.kind, o, now_opts) for o in objs]
        if not header_printed and not args.no_headers:
            rows.insert(0, printers.table_header(kind.kind, opts))
        header_printed = True
        if rows:
            out(writer.render(rows))

    if args.output in ("json", "yaml") and not args.watch:
        if items or not names:
            _print_objects(items, args.output, single=bool(names) and len(names) == 1)
    elif args.output == "name":
        for o in items:
            out(printers.object_name(o))
    elif args.output in ("json", "yaml"):
        for o in items:
            _print_watched(o, args.output)
    elif items:
        print_rows(items)
    if not items and not names and args.output not in ("json", "yaml"):
        err(_no_resources(kind, namespace))
    for message in failed:
        err(f"error: {message}")

    if args.watch:
        def emit(event: str, obj: Obj) -> None:
            if names and (obj.get("metadata") or {}).get("name") not in names:
                return
            if args.output in ("json", "yaml"):
                _print_watched(obj, args.output)
            elif args.output == "name":
                out(printers.object_name(obj))
            else:
                print_rows([obj])

        watch_changes(client, kind, namespace, args.selector, rv, args.watch_timeout, emit)
    return EXIT_ERROR if failed else EXIT_OK


def _print_watched(obj: Obj, output: str) -> None:
    if output == "json":
        out(printers.to_json(obj))
    else:
        out("---\n" + safe.to_yaml(obj))


def watch_changes(client: ClusterClient, kind: Kind, namespace: str, selector: str, resource_version: int,
                  timeout: float | None, emit: Callable[[str, Obj], None],
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Call ``emit`` for every change after ``resource_version`` until ``timeout`` (or forever).

    A stream the server ends early is reopened from the last revision seen; a
    revision etcd has compacted away means list again (each object is emitted as
    ADDED) and watch from there, as client-go's reflector does.
    """
    deadline = None if timeout is None else clock() + timeout
    rv = resource_version
    while True:
        remaining = None if deadline is None else deadline - clock()
        if remaining is not None and remaining <= 0:
            return
        started = clock()
        try:
            for event, obj in client.watch(kind.kind, namespace, selector, rv, timeout=remaining):
                try:
                    rv = max(rv, int((obj.get("metadata") or {}).get("resourceVersion") or 0))
                except (TypeError, ValueError):
                    pass
                emit(event, obj)
        except ExpiredError:
            log.debug("watch of %s from %d expired; listing again", kind.plural, rv)
            items, rv = client.list(kind.kind, namespace, selector)
            for obj in sorted(items, key=_sort_key):
                emit("ADDED", obj)
            continue
        if deadline is not None and clock() >= deadline:
            return
        # The server closed the stream before our deadline (a restart, a leader
        # change): reopen it, but never spin on a server that closes at once.
        if clock() - started < 1.0:
            time.sleep(1.0)


# --- describe ------------------------------------------------------------------------


def cmd_describe(session: Session) -> int:
    args = session.args
    targets = parse_targets(args.targets, "describe")
    client = session.client
    pairs: list[tuple[Kind, str]]
    objects: list[Obj] = []
    failed: list[str] = []
    if isinstance(targets, list):
        pairs = targets
    else:
        kind, names = targets
        if names and args.selector:
            raise UsageError("a NAME cannot be given together with a selector (-l)", "describe")
        pairs = [(kind, n) for n in names]
        if not names:
            ns = "" if args.all_namespaces and kind.namespaced else _namespace_for(kind, session)
            items, _ = client.list(kind.kind, ns, args.selector)
            if not items:
                err(_no_resources(kind, ns))
            objects.extend(sorted(items, key=_sort_key))
    for kind, name in pairs:
        ns = _namespace_for(kind, session)
        try:
            objects.append(client.get(kind.kind, name, ns))
        except NotFoundError:
            # kubectl describe treats a name that matches nothing as a prefix:
            # ``describe pod web`` shows the pods of Deployment web.
            items, _ = client.list(kind.kind, ns)
            matches = [o for o in items if str((o.get("metadata") or {}).get("name", "")).startswith(name)]
            if not matches:
                failed.append(printers.not_found_message(kind, name))
            objects.extend(sorted(matches, key=_sort_key))
    now = printers.utcnow()
    for i, obj in enumerate(objects):
        node_pods = _pods_on_node(client, obj) if obj.get("kind") == "Node" else None
        events = _events_about(client, obj) if obj.get("kind") == "Pod" else None
        if i:
            out()
        sys.stdout.write(safe.escape_terminal(printers.describe(obj, node_pods=node_pods, now=now, events=events)))
        sys.stdout.flush()
    for message in failed:
        err(f"error: {message}")
    return EXIT_ERROR if failed else EXIT_OK


def _events_about(client: ClusterClient, obj: Obj) -> list[Obj] | None:
    """The Events about ``obj`` (matched by uid), for the end of its describe page; None
    when they cannot be listed (the page is still worth showing)."""
    md = obj.get("metadata") or {}
    try:
        events, _ = client.list("Event", str(md.get("namespace") or "default"))
    except OrchError as e:
        log.debug("events of %s not listed: %s", md.get("name"), e)
        return None
    uid = md.get("uid")
    return [e for e in events if (e.get("involvedObject") or {}).get("uid") == uid
            and (e.get("involvedObject") or {}).get("kind") == obj.get("kind")]


def _pods_on_node(client: ClusterClient, node: Obj) -> list[Obj] | None:
    name = (node.get("metadata") or {}).get("name")
    try:
        pods, _ = client.list("Pod", "")
    except OrchError as e:
        # The page is still useful without the pods; say why they are missing.
        log.warning("cannot list the pods of node %s: %s", name, e)
        return None
    return sorted((p for p in pods if (p.get("spec") or {}).get("nodeName") == name), key=_sort_key)


# --- delete --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    name: str
    namespace: str


def _delete_targets(session: Session) -> list[Target]:
    args = session.args
    if args.filename:
        if args.targets:
            raise UsageError("give either -f FILE or KIND NAME..., not both", "delete")
        docs = manifests.load(args.filename, recursive=args.recursive)
        if not docs:
            raise CliError("no objects passed to delete")
        targets: list[Target] = []
        for doc, obj in zip(docs, prepare_documents(docs, args.namespace), strict=True):
            kind_word = obj.get("kind")
            kind = kind_for(kind_word) if isinstance(kind_word, str) else None
            if kind is None:
                raise CliError(f"{doc.where}: unknown kind {kind_word!r}")
            md = printers.metadata(obj)
            name = md.get("name")
            if not isinstance(name, str) or not name:
                raise CliError(f"{doc.where}: metadata.name is required to delete an object")
            ns = str(md.get("namespace") or "") if kind.namespaced else ""
            targets.append(Target(kind, name, ns))
        return targets
    parsed = parse_targets(args.targets, "delete")
    if isinstance(parsed, list):
        return [Target(k, n, _namespace_for(k, session)) for k, n in parsed]
    kind, names = parsed
    namespace = _namespace_for(kind, session)
    if names and (args.selector or args.all):
        raise UsageError("a NAME cannot be given together with -l or --all", "delete")
    if not names and not args.selector and not args.all:
        raise UsageError(f"resource(s) were provided, but no name was specified; give NAME, -l SELECTOR or --all "
                         f"(e.g. '{PROG} delete {args.targets[0]} NAME')", "delete")
    if names:
        return [Target(kind, n, namespace) for n in names]
    items, _ = session.client.list(kind.kind, namespace, args.selector)
    return [Target(kind, str(o["metadata"]["name"]), namespace) for o in sorted(items, key=_sort_key)]


def cmd_delete(session: Session) -> int:
    args = session.args
    targets = _delete_targets(session)
    client = session.client
    grace = 1 if args.now else args.grace_period
    failed = False
    deleted: list[tuple[Target, str]] = []
    if not targets and not args.filename:
        err("No resources found")
    for t in targets:
        try:
            obj = client.delete(t.kind.kind, t.name, t.namespace, grace_period_seconds=grace)
        except NotFoundError:
            if not args.ignore_not_found:
                err(f"error: {printers.not_found_message(t.kind, t.name)}")
                failed = True
            continue
        except ConflictError as e:
            err(f"error: {conflict_message(e, t.kind, t.name)}")
            failed = True
            continue
        out(f'{printers.resource_type(t.kind)} "{t.name}" deleted')
        deleted.append((t, str((obj.get("metadata") or {}).get("uid", ""))))
    if args.wait and deleted:
        wait_deleted(client, deleted, args.timeout)
    return EXIT_ERROR if failed else EXIT_OK


def wait_deleted(client: ClusterClient, deleted: Sequence[tuple[Target, str]], timeout: float) -> None:
    """Poll until every object is gone (or replaced by a new one with another uid), like ``kubectl delete``."""
    progress = Progress()
    deadline = time.monotonic() + timeout
    pending = list(deleted)
    try:
        while pending:
            still: list[tuple[Target, str]] = []
            for t, uid in pending:
                try:
                    obj = client.get(t.kind.kind, t.name, t.namespace)
                except NotFoundError:
                    continue
                if uid and (obj.get("metadata") or {}).get("uid") not in (None, uid):
                    continue  # a new object of the same name: ours is gone
                still.append((t, uid))
            pending = still
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(f"{printers.resource_plural(t.kind)}/{t.name}" for t, _ in pending)
                raise CliError(f"timed out waiting for the condition on {names}")
            first = pending[0][0]
            more = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
            progress.update(f"waiting for {printers.resource_type(first.kind)}/{first.name}{more} to be deleted "
                            f"({int(timeout - left)}s)")
            time.sleep(min(POLL_INTERVAL, max(left, 0.0)))
    finally:
        progress.done()


# --- logs and exec -------------------------------------------------------------------


def _pod_name(word: str, command: str) -> str:
    kind, sep, name = word.partition("/")
    if not sep:
        return word
    if resolve_kind(kind).kind != "Pod" or not name:
        raise UsageError(f"{command} takes a pod: POD or pod/NAME, not {word!r}", command)
    return name


def choose_container(pod: Obj, explicit: str) -> str:
    """The container ``-c`` names, the pod's default-container annotation, or its only container."""
    md = pod.get("metadata") or {}
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    if explicit:
        if explicit not in names:
            raise CliError(f"container {explicit} is not valid for pod {md.get('name')}")
        return explicit
    default = (md.get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    if default in names:
        return str(default)
    if len(names) == 1:
        return names[0]
    raise CliError(f"a container name must be specified for pod {md.get('name')}, "
                   f"choose one of: [{' '.join(names)}]")


def _target(session: Session, command: str) -> tuple[str, str]:
    """The pod's name and the container to use, checked against the pod."""
    name = _pod_name(session.args.pod, command)
    try:
        pod = session.client.get("Pod", name, session.namespace)
    except NotFoundError:
        raise CliError(printers.not_found_message(KINDS["Pod"], name)) from None
    return name, choose_container(pod, session.args.container)


def _write_log(stream: TextIO, data: bytes, escaper: safe.LogEscaper | None) -> None:
    """A container's log bytes: as they are in a pipe or a file, escaped on a terminal, where
    a container could otherwise move the cursor, rewrite lines or set the clipboard
    (kubectl passes them through; ``orchctl logs POD | cat`` still does)."""
    if escaper is None:
        _write_bytes(stream, data)
    else:
        stream.write(escaper.feed(data))
        stream.flush()


def _write_bytes(stream: TextIO, data: bytes) -> None:
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def _proxied(e: UnavailableError) -> CliError:
    # The cluster answered (the pod was read first): unavailable is the node's agent.
    return CliError(str(e))


def cmd_image_import(session: Session) -> int:
    args = session.args
    if not os.path.isfile(args.file):
        raise CliError(f"{args.file}: no such file")
    replies = session.client.import_image(args.file, node=args.node, reference=args.reference)
    failed = False
    for reply in replies:
        if reply.error:
            failed = True
            err(f"error: node {reply.node}: {reply.error}")
            continue
        for image in reply.images:
            out(f"node {reply.node}: imported {image.reference} ({image.digest})")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_logs(session: Session) -> int:
    args = session.args
    name, container = _target(session, "logs")
    tail = args.tail if args.tail >= 0 else None
    since = int(args.since + 0.999) if args.since is not None else None
    escaper = safe.LogEscaper() if _isatty(sys.stdout) else None
    try:
        for entry in session.client.logs(session.namespace, name, container, follow=args.follow, tail=tail,
                                         previous=args.previous, timestamps=args.timestamps,
                                         since_seconds=since):
            _write_log(sys.stdout, entry.content, escaper)
        if escaper is not None:
            sys.stdout.write(escaper.end())
    except UnavailableError as e:
        raise _proxied(e) from e
    return EXIT_OK


def _terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


def _stdin_source(tty: bool) -> Iterator[bytes | tuple[int, int]]:
    """Chunks of our stdin as they come (and terminal sizes on SIGWINCH); ends at end of file."""
    items: queue.Queue[bytes | tuple[int, int]] = queue.Queue()
    try:
        fd: int | None = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    stdin_buffer: Any = getattr(sys.stdin, "buffer", None)

    def read() -> None:
        while True:
            try:
                data = os.read(fd, 65536) if fd is not None else stdin_buffer.read1(65536)
            except (OSError, ValueError):
                data = b""
            items.put(data)
            if not data:
                return

    threading.Thread(target=read, name="exec-stdin", daemon=True).start()
    if tty and fd is not None:
        with contextlib.suppress(ValueError):  # not the main thread: no resizes then
            signal.signal(signal.SIGWINCH, lambda _s, _f: items.put(_terminal_size(fd) or (0, 0)))
    while (item := items.get()) != b"":
        yield item


def cmd_exec(session: Session) -> int:
    args = session.args
    command = list(args.exec_argv)
    if not command:
        raise UsageError("you must specify at least one command for the container", "exec")
    name, container = _target(session, "exec")
    tty = args.tty
    stdin_fd = None
    if tty and not (args.stdin and _isatty(sys.stdin)):
        err("Unable to use a TTY - input is not a terminal or the right kind of file")
        tty = False
    if tty:
        stdin_fd = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin_fd) if stdin_fd is not None else None
    code = EXIT_OK
    try:
        if stdin_fd is not None:
            ttymod.setraw(stdin_fd)  # keystrokes (^C too) go to the command, as with kubectl exec -it
        outputs = session.client.exec(session.namespace, name, container, command,
                                      stdin=_stdin_source(tty) if args.stdin else None, tty=tty,
                                      terminal_size=_terminal_size(stdin_fd) if stdin_fd is not None else None)
        for output in outputs:
            kind = output.WhichOneof("output")
            if kind == "stdout":
                _write_bytes(sys.stdout, output.stdout)
            elif kind == "stderr":
                _write_bytes(sys.stderr, output.stderr)
            elif kind == "result":
                code = output.result.exit_code
                if output.result.error:
                    raise CliError(output.result.error, code or EXIT_ERROR)
    except UnavailableError as e:
        raise _proxied(e) from e
    finally:
        if stdin_fd is not None and saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    if code != EXIT_OK:
        err(f"command terminated with exit code {code}")
    return code


# --- lab -----------------------------------------------------------------------------


def _lab_dir(session: Session, explicit: Path | None) -> Path:
    from cli import (
        lab,  # lazily: the lab pulls in process management the other verbs never need
    )

    if explicit is not None:
        return explicit
    if session.config.lab_dir:
        return Path(session.config.lab_dir)
    return lab.DEFAULT_LAB_DIR


def cmd_lab_up(session: Session) -> int:
    from cli import lab

    args = session.args
    # Resolved, because the config remembers it and ``lab down`` compares against it.
    lab_dir = (args.dir if args.dir is not None else lab.DEFAULT_LAB_DIR).resolve()
    # Read the manifest first: a typo in it should not cost a whole lab start-up.
    docs = manifests.load([str(args.apply)]) if args.apply is not None else []
    if args.insecure:
        err("warning: --insecure: the lab's etcd, schedulers and agents speak plaintext with no certificates: "
            "anyone who can reach their ports owns the lab")
    try:
        status = lab.up(lab_dir, args.nodes, schedulers=args.schedulers, insecure=args.insecure)
    except OSError as e:
        raise CliError(f"lab up failed: {e}") from e
    server = str(status.get("server") or "")
    config = lab_config(status)
    save_config(session.config_path, config)
    out(f"lab is up with {args.nodes} node{'s' if args.nodes != 1 else ''}"
        + (f" and {args.schedulers} schedulers" if args.schedulers > 1 else ""))
    out(printers.lab_status(status, config=str(session.config_path)))
    _print_lab_network(status)
    _print_lab_tls(status)
    if os.environ.get("ORCH_SERVER") and os.environ["ORCH_SERVER"] != server:
        err(f"warning: $ORCH_SERVER={os.environ['ORCH_SERVER']} overrides the config; unset it to use this lab")
    if not docs:
        return EXIT_OK
    out()
    session.connect(server, config)
    apply_documents(session, docs)
    namespaces = wait_for_pods(session.client, prepare_documents(docs, session.args.namespace), args.timeout)
    out()
    _print_pods_wide(session.client, namespaces)
    return EXIT_OK


def lab_config(status: Mapping[str, Any]) -> Config:
    """The config that points orchctl at a lab: its servers, and its admin certificate (or plaintext)."""
    tls = status.get("tls") or {}
    if not tls.get("enabled"):
        return Config(server=str(status.get("server") or ""), lab_dir=str(status["lab_dir"]), insecure=True)
    return Config(server=str(status.get("server") or ""), lab_dir=str(status["lab_dir"]),
                  certificate_authority=tls["certificateAuthority"], client_certificate=tls["clientCertificate"],
                  client_key=tls["clientKey"])


def _print_pods_wide(client: ClusterClient, namespaces: set[str]) -> None:
    all_ns = len(namespaces) != 1
    namespace = "" if all_ns else next(iter(namespaces))
    items, _ = client.list("Pod", namespace)
    opts = printers.TableOptions(wide=True, all_namespaces=all_ns, now=printers.utcnow())
    if items:
        out(printers.table("Pod", sorted(items, key=_sort_key), opts))
    else:
        err(_no_resources(KINDS["Pod"], namespace))


@dataclass(frozen=True, slots=True)
class PodsProgress:
    running: int
    expected: int
    failed: list[str]

    @property
    def done(self) -> bool:
        return self.running >= self.expected and not self.failed


def pods_progress(objects: Sequence[Obj], pods: Sequence[Obj]) -> PodsProgress:
    """How many of the pods that ``objects`` ask for run: each Pod, and each Deployment's replicas.

    A pod that finished successfully counts as done (it ran); one that failed is
    reported, since waiting longer will not make it run.
    """
    running = expected = 0
    failed: list[str] = []

    def ok(p: Obj) -> bool:
        md, st = p.get("metadata") or {}, p.get("status") or {}
        return not md.get("deletionTimestamp") and st.get("phase") in ("Running", "Succeeded")

    def check_failed(p: Obj) -> None:
        _, _, reason, _, _ = printers.pod_status(p)
        if (p.get("status") or {}).get("phase") == "Failed":
            failed.append(f'pod "{(p.get("metadata") or {}).get("name")}" failed: {reason}')

    by_key = {_sort_key(p): p for p in pods}
    for obj in objects:
        md = obj.get("metadata") or {}
        ns = str(md.get("namespace") or DEFAULT_NAMESPACE)
        if obj.get("kind") == "Pod":
            expected += 1
            pod = by_key.get((ns, str(md.get("name", ""))))
            if pod is not None:
                running += ok(pod)
                check_failed(pod)
        elif obj.get("kind") == "Deployment":
            spec = obj.get("spec") or {}
            replicas = int(spec.get("replicas", 1))
            wanted = (spec.get("selector") or {}).get("matchLabels") or {}
            mine = [p for p in pods if (p.get("metadata") or {}).get("namespace") == ns and wanted
                    and all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items())]
            expected += replicas
            running += min(replicas, sum(ok(p) for p in mine))
    return PodsProgress(running, expected, failed)


def wait_for_pods(client: ClusterClient, objects: Sequence[Obj], timeout: float) -> set[str]:
    """Wait until the pods ``objects`` ask for are Running; the namespaces they live in."""
    namespaces = {str((o.get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE)
                  for o in objects if o.get("kind") in ("Pod", "Deployment")}
    progress = Progress()
    deadline = time.monotonic() + timeout
    try:
        while True:
            pods: list[Obj] = []
            for ns in sorted(namespaces):
                items, _ = client.list("Pod", ns)
                pods.extend(items)
            state = pods_progress(objects, pods)
            if state.failed:
                raise CliError("; ".join(state.failed))
            if state.done:
                return namespaces
            if time.monotonic() >= deadline:
                raise CliError(f"timed out after {timeout:g}s waiting for pods to be Running "
                               f"({state.running}/{state.expected} running); see '{PROG} get pods -o wide'")
            progress.update(f"waiting for pods to be Running: {state.running}/{state.expected}")
            time.sleep(1.0)
    finally:
        progress.done()


def cmd_lab_down(session: Session) -> int:
    from cli import lab

    lab_dir = _lab_dir(session, session.args.dir).resolve()
    try:
        lab.down(lab_dir)
    except OSError as e:
        raise CliError(f"lab down failed: {e}") from e
    # The config pointed at this lab: leave no address behind that nothing answers on.
    if session.config.lab_dir and Path(session.config.lab_dir).resolve() == lab_dir:
        session.config_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            session.config_path.parent.rmdir()  # ~/.orch, if lab up made it and nothing else is there
    out(f"lab at {lab_dir} is down")
    return EXIT_OK


def cmd_lab_status(session: Session) -> int:
    from cli import lab

    status = lab.status(_lab_dir(session, session.args.dir))
    if session.args.output == "json":
        out(printers.to_json(status))
    else:
        out(printers.lab_status(status))
        _print_lab_network(status)
        _print_lab_tls(status)
    return EXIT_OK


def _print_lab_tls(status: Mapping[str, Any]) -> None:
    """Whether the lab's connections are mutual TLS, and where its certificates are."""
    tls = status.get("tls")
    if not tls:
        return  # a lab from before TLS
    out()
    if tls.get("enabled"):
        out(f"tls:      mutual TLS (orchctl, agents, schedulers, etcd); certificates in {tls['pkiDir']} "
            f"(orchctl pki show --dir {tls['pkiDir']})")
    else:
        out("tls:      OFF (lab up --insecure): plaintext everywhere, anyone who reaches a port owns the lab")


def _print_lab_network(status: Mapping[str, Any]) -> None:
    """The lab's network under the process table: its subnet, and each node's namespace and address."""
    net = status.get("network")
    if not net:
        return  # a lab from before nodes had namespaces of their own
    out()
    out(f"network:  {net['subnet']} on bridge {net['bridge']} in {net['netns']}; "
        f"host end {net['host_interface']} {net['host_address']}")
    rows: list[printers.Row] = [["NODE", "ADDRESS", "NETNS"]]
    for a in status.get("agents") or []:
        rows.append([str(a.get("node")), str(a.get("address") or "-"), str(a.get("netns") or "-")])
    out(printers.TableWriter().render(rows))
    out("enter a node's network with: nsenter --net=NETNS (e.g. nsenter --net=NETNS ip addr)")


# --- nodes: cordon, uncordon, drain ------------------------------------------------------


def cmd_cordon(session: Session) -> int:
    node = session.args.node.removeprefix("node/").removeprefix("nodes/")
    client = session.client
    before = client.get("Node", node)
    wanted = bool(session.args.unschedulable)
    word = "cordoned" if wanted else "uncordoned"
    if bool((before.get("spec") or {}).get("unschedulable")) == wanted:
        out(f"node/{node} already {word}")
        return EXIT_OK
    client.patch_node(node, {"unschedulable": True if wanted else None})
    out(f"node/{node} {word}")
    return EXIT_OK


def cmd_drain(session: Session) -> int:
    args = session.args
    node = args.node.removeprefix("node/").removeprefix("nodes/")
    client = session.client
    client.get("Node", node)  # a clear NotFound before anything is changed
    if not bool((client.get("Node", node).get("spec") or {}).get("unschedulable")):
        client.patch_node(node, {"unschedulable": True})
        out(f"node/{node} cordoned")
    else:
        out(f"node/{node} already cordoned")
    pods, _ = client.list("Pod")
    plan = rollout.drain_plan(node, pods, force=args.force)
    if plan.unmanaged:
        raise CliError(f'unable to drain node "{node}": cannot delete Pods that declare no controller '
                       f"(use --force to override): {plan.names(plan.unmanaged)}")
    forced = [p for p in plan.delete if not any(o.get("controller") for o in
                                                printers.metadata(p).get("ownerReferences") or [])]
    if forced:
        err(f"Warning: deleting Pods that declare no controller: {plan.names(forced)}")
    grace = None if args.grace_period < 0 else args.grace_period
    waiting: dict[tuple[str, str], str] = {}
    for pod in plan.delete:
        md = printers.metadata(pod)
        ns, name = str(md.get("namespace", "")), str(md.get("name", ""))
        out(f"evicting pod {ns}/{name}")
        try:
            client.delete("Pod", name, ns, grace_period_seconds=grace)
        except NotFoundError:
            pass
        waiting[(ns, name)] = str(md.get("uid", ""))
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    progress = Progress()
    try:
        while waiting:
            for (ns, name), uid in list(waiting.items()):
                try:
                    gone = client.get("Pod", name, ns).get("metadata", {}).get("uid") != uid
                except NotFoundError:
                    gone = True
                if gone:
                    del waiting[(ns, name)]
                    progress.done()
                    out(f"pod/{name} evicted")
            if not waiting:
                break
            if deadline is not None and time.monotonic() >= deadline:
                left = ", ".join(f"{ns}/{name}" for ns, name in waiting)
                raise CliError(f'unable to drain node "{node}": timed out after {args.timeout:g}s waiting for '
                               f"the pods to be deleted: {left}")
            progress.update(f"waiting for {len(waiting)} pod(s) to be deleted")
            time.sleep(POLL_INTERVAL)
    finally:
        progress.done()
    out(f"node/{node} drained")
    return EXIT_OK


# --- deployments: scale, rollout ---------------------------------------------------------


def _deployment_name(words: Sequence[str], command: str) -> str:
    """``deployment/NAME``, ``deploy/NAME`` or ``deployment NAME``."""
    if len(words) == 1 and "/" in words[0]:
        kind_word, name = words[0].split("/", 1)
    elif len(words) == 2:
        kind_word, name = words
    else:
        raise UsageError("expected one deployment, as deployment/NAME", command)
    kind = kind_for(kind_word)
    if kind is None or kind.kind != "Deployment" or not name:
        raise UsageError(f'"{command}" works on deployments, not {kind_word!r}', command)
    return name


def update_deployment(client: ClusterClient, namespace: str, name: str, change: Callable[[Obj], None],
                      attempts: int = 5) -> Obj:
    """Get, ``change``, apply guarded by the resourceVersion read; again on a lost race."""
    for attempt in range(attempts):
        dep = client.get("Deployment", name, namespace)
        change(dep)
        try:
            return client.apply([dep])[0][1]
        except ConflictError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def cmd_scale(session: Session) -> int:
    name = _deployment_name(session.args.targets, "scale")
    replicas = session.args.replicas

    def change(dep: Obj) -> None:
        dep.setdefault("spec", {})["replicas"] = replicas

    update_deployment(session.client, session.namespace, name, change)
    out(f"deployment.apps/{name} scaled")
    return EXIT_OK


def cmd_top(session: Session) -> int:
    """CPU (millicores, the rate between two readings of the agents) and memory working set,
    with kubectl top's columns; nodes' percentages are of their allocatable."""
    args = session.args
    kind = "nodes" if args.what in ("nodes", "node", "no") else "pods"
    namespace = "" if kind == "nodes" or args.all_namespaces else session.namespace
    reply = session.client.top(kind, namespace)
    if kind == "nodes":
        nodes = {n["metadata"]["name"]: n for n in session.client.list("Node")[0]}
        if not reply.entries:
            raise CliError("metrics not available yet: no node's agent answered")
        out(printers.top_nodes_table(list(reply.entries), nodes).rstrip("\n"))
        return EXIT_OK
    if not reply.entries:
        where = "in any namespace" if args.all_namespaces else f'in namespace "{session.namespace}"'
        err(f"No resources found {where}.")
        return EXIT_OK
    out(printers.top_pods_table(list(reply.entries), all_namespaces=args.all_namespaces,
                                containers=args.containers).rstrip("\n"))
    return EXIT_OK


def cmd_rollout_status(session: Session) -> int:
    args = session.args
    name = _deployment_name(args.targets, "rollout status")
    client = session.client
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    last = ""
    while True:
        try:
            message, done = rollout.rollout_status(client.get("Deployment", name, session.namespace))
        except rollout.RolloutError as e:
            raise CliError(str(e)) from None
        if message != last:
            out(message)
            last = message
        if done or not args.watch:
            return EXIT_OK if done else EXIT_ERROR
        if deadline is not None and time.monotonic() >= deadline:
            raise CliError("timed out waiting for the condition")
        time.sleep(POLL_INTERVAL)


def _revisions(session: Session, name: str) -> tuple[Obj, list[Obj]]:
    dep = session.client.get("Deployment", name, session.namespace)
    items, _ = session.client.list("ControllerRevision", session.namespace)
    return dep, rollout.owned_revisions(dep, items)


def cmd_rollout_history(session: Session) -> int:
    name = _deployment_name(session.args.targets, "rollout history")
    _, revisions = _revisions(session, name)
    if session.args.revision:
        try:
            rev = next(r for r in revisions if rollout.revision_of(r) == session.args.revision)
        except StopIteration:
            raise CliError(f"unable to find the specified revision {session.args.revision}") from None
        out(f"deployment.apps/{name} with revision #{session.args.revision}")
        out("Pod Template:")
        for line in printers.to_yaml((rev.get("data") or {}).get("template") or {}).rstrip().splitlines():
            out(f"  {line}")
        return EXIT_OK
    out(f"deployment.apps/{name}")
    out(rollout.history_table(revisions))
    return EXIT_OK


def cmd_rollout_undo(session: Session) -> int:
    name = _deployment_name(session.args.targets, "rollout undo")
    dep, revisions = _revisions(session, name)
    try:
        target = rollout.choose_revision(dep, revisions, session.args.to_revision)
    except rollout.RolloutError as e:
        raise CliError(str(e)) from e
    template = (target.get("data") or {}).get("template")
    if not isinstance(template, dict):
        raise CliError(f"revision {rollout.revision_of(target)} of deployment {name!r} has no pod template")
    if template == (dep.get("spec") or {}).get("template"):
        out(f"deployment.apps/{name} skipped rollback (current template already matches revision "
            f"{rollout.revision_of(target)})")
        return EXIT_OK

    def change(d: Obj) -> None:
        d.setdefault("spec", {})["template"] = copy.deepcopy(template)

    update_deployment(session.client, session.namespace, name, change)
    out(f"deployment.apps/{name} rolled back")
    return EXIT_OK


def cmd_rollout_restart(session: Session) -> int:
    name = _deployment_name(session.args.targets, "rollout restart")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def change(dep: Obj) -> None:
        tmd = dep.setdefault("spec", {}).setdefault("template", {}).setdefault("metadata", {})
        tmd["annotations"] = {**(tmd.get("annotations") or {}), rollout.RESTARTED_AT_ANNOTATION: stamp}

    update_deployment(session.client, session.namespace, name, change)
    out(f"deployment.apps/{name} restarted")
    return EXIT_OK


# --- pki -----------------------------------------------------------------------------


def cmd_pki(session: Session) -> int:
    """``orchctl pki …``: local files only, no cluster; a ``PkiError`` is an OrchError (exit 1)."""
    from cli import pki as pki_cli

    return pki_cli.run(session.args)


# --- entry point ---------------------------------------------------------------------


def _report(message: str) -> None:
    """``error: <message>``; a message of several lines carries its own prefixes after the first."""
    err(f"error: {message}")


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; for ``exec``, everything after the first ``--`` is the command, untouched by argparse."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut + 1:]
        if _verb(head) == "exec":
            args = parser.parse_args(head)
            args.exec_argv = [*args.exec_argv, *tail]
            return args
    return parser.parse_args(argv)


_VALUED_GLOBALS = frozenset({"--server", "--config", "-n", "--namespace", "--request-timeout",
                             "--certificate-authority", "--client-certificate", "--client-key", "--token"})


def _verb(argv: list[str]) -> str | None:
    """The command word: the first argument that is neither a global option nor its value."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED_GLOBALS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as e:
        # argparse exits for --help (0) and usage errors (2); a library entry point returns instead.
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    if args.verbose:
        # Only with -v: tests call main() many times in one process, and an unasked-for
        # handler would pin whatever sys.stderr was at the first call.
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    session = Session(args)
    try:
        return int(args.func(session))
    except UsageError as e:
        prog = f"{PROG} {e.command}" if e.command else PROG
        err(f"error: {e}\nSee '{prog} -h' for help and examples.")
        return EXIT_USAGE
    except CliError as e:
        _report(str(e))
        return e.code
    except (ConfigError, manifests.ManifestError) as e:
        _report(str(e))
        return EXIT_ERROR
    except UnavailableError as e:
        _report(f"cannot reach the cluster at {session.server or '?'}: {e}")
        return EXIT_ERROR
    except ConflictError as e:
        _report(conflict_message(e))
        return EXIT_ERROR
    except OrchError as e:
        text = str(e)
        if text.startswith("DEADLINE_EXCEEDED"):
            text = (f"cannot reach the cluster at {session.server or '?'}: no answer within "
                    f"{args.request_timeout:g}s")
        _report(text)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if _isatty(sys.stderr):
            sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `orchctl get pods | head`: the reader left; say nothing more to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
