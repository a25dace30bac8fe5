"""``orchctl pki``: make and look after the cluster's certificates, as ``kubeadm certs`` does.

    orchctl pki init [--dir DIR] [--scheduler-san NAME|IP]... [--etcd-san NAME|IP]...
                     [--node NAME[=ADDR,...]]... [--validity D] [--ca-validity D] [--force]
    orchctl pki issue node NAME [--address ADDR]... [--validity D] [--force]
    orchctl pki issue user NAME [--group G]... [--validity D] [--force]
    orchctl pki rotate node NAME | user NAME | scheduler | admin | etcd | all [--validity D]
    orchctl pki rotate ca | etcd-ca [--finish [--force]] [--ca-validity D]
    orchctl pki show [--dir DIR] [-o table|json]

The work is done by ``apimachinery.pki`` (the layout and the reasons are in its
docstring and in docs/security.md); this module is the argument parsing and the
printing. It imports ``cryptography`` only when a ``pki`` command runs, so the
other verbs do not pay for it.

Errors about the files are ``PkiError`` (an ``OrchError``: ``error: …``, exit 1);
bad arguments are argparse errors naming the option (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/etc/orch/pki")  # apimachinery.pki.DEFAULT_DIR, without importing cryptography here
SOON = 30 * 86400.0  # `show` flags a certificate that expires within 30 days


# --- argument types: each error names what is wrong, argparse adds the option ----------


def _typed(parse: Any) -> Any:
    """An argparse type from a parser that raises ValueError with a readable message."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _duration(text: str) -> float:
    from apimachinery.pki import parse_duration

    return parse_duration(text)


def _sans(text: str) -> list[str]:
    """One or several comma-separated DNS names or IPs, each checked."""
    from apimachinery.pki import parse_san

    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("expected a DNS name or an IP address")
    for value in values:
        parse_san(value)
    return values


def _node_name(text: str) -> str:
    from apimachinery.pki import validate_node_name

    validate_node_name(text)
    return text


def _user_name(text: str) -> str:
    from apimachinery.pki import validate_user_name

    validate_user_name(text)
    return text


def _group(text: str) -> str:
    from apimachinery.pki import validate_group

    validate_group(text)
    return text


def _node(text: str) -> tuple[str, list[str]]:
    """``NAME`` or ``NAME=ADDR,...``."""
    name, _, addresses = text.partition("=")
    _node_name(name)
    return name, (_sans(addresses) if addresses else [])


class _Nodes(argparse.Action):
    """``--node`` into a dict; the same node twice is a usage error, not a silent overwrite."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        nodes = dict(getattr(namespace, self.dest) or {})
        name, addresses = values
        if name in nodes:
            raise argparse.ArgumentError(self, f"node {name!r} given twice")
        nodes[name] = addresses
        setattr(namespace, self.dest, nodes)


# --- the parser -----------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The ``pki`` verbs under ``p`` (the ``orchctl pki`` parser); ``common`` holds the global options."""
    prog = "orchctl pki"
    dir_parent = argparse.ArgumentParser(add_help=False)
    dir_parent.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                            help=f"the PKI directory (default {DEFAULT_DIR})")
    validity = argparse.ArgumentParser(add_help=False)
    validity.add_argument("--validity", type=_typed(_duration), metavar="DURATION",
                          help="how long the certificate is valid, e.g. 90s, 30m, 8760h, 365d, 10y "
                               "(default: 1y for a new one; a rotated one keeps its lifetime)")
    parents = [common, dir_parent]
    sub = p.add_subparsers(dest="pki_command", metavar="init|issue|rotate|show", required=True)

    q = sub.add_parser("init", parents=[*parents, validity], help="create the CAs and every certificate",
                       usage=f"{prog} init [--dir DIR] [--scheduler-san NAME|IP]... [--node NAME[=ADDR,...]]... "
                             "[--validity D] [--ca-validity D] [--force]",
                       description="Create the cluster CA, etcd's CA, and the certificates of the scheduler, "
                                   "the admin, etcd, the scheduler's etcd client and each --node.")
    q.add_argument("--scheduler-san", type=_typed(_sans), action="extend", default=[], metavar="NAME|IP[,...]",
                   help="a DNS name or IP the scheduler is dialled at (repeatable; localhost and 127.0.0.1 "
                        "are always in)")
    q.add_argument("--etcd-san", type=_typed(_sans), action="extend", default=[], metavar="NAME|IP[,...]",
                   help="a DNS name or IP etcd is dialled at (repeatable; localhost and 127.0.0.1 always)")
    q.add_argument("--node", type=_typed(_node), action=_Nodes, default={}, metavar="NAME[=ADDR,...]",
                   help="a node agent certificate for NAME, with its addresses as SANs (repeatable)")
    q.add_argument("--ca-validity", type=_typed(_duration), metavar="DURATION", help="CA lifetime (default 10y)")
    q.add_argument("--force", action="store_true",
                   help="replace an existing CA; every certificate in the directory is issued again")
    q.set_defaults(pki_func=_init)

    # No usage= on a parser with subcommands: argparse builds the subcommands' prog from it.
    q = sub.add_parser("issue", parents=parents, help="issue a node's or a user's certificate",
                       description=f"{prog} issue node NAME [--address ADDR]... | user NAME [--group G]...")
    issue = q.add_subparsers(dest="pki_issue", metavar="node|user", required=True)
    r = issue.add_parser("node", parents=[*parents, validity], help="a node agent's certificate",
                         usage=f"{prog} issue node NAME [--address ADDR]... [--validity D] [--force]")
    r.add_argument("name", type=_typed(_node_name), metavar="NAME")
    r.add_argument("--address", type=_typed(_sans), action="extend", default=[], metavar="ADDR[,...]",
                   help="an IP or DNS name of the node, for its SANs (repeatable)")
    r.add_argument("--force", action="store_true", help="replace an existing certificate of that node")
    r.set_defaults(pki_func=_issue_node)
    r = issue.add_parser("user", parents=[*parents, validity], help="a user's client certificate",
                         usage=f"{prog} issue user NAME [--group G]... [--validity D] [--force]")
    r.add_argument("name", type=_typed(_user_name), metavar="NAME")
    r.add_argument("--group", type=_typed(_group), action="append", default=[], metavar="G",
                   help="a group of the user, the certificate's O (repeatable)")
    r.add_argument("--force", action="store_true", help="replace an existing certificate of that user")
    r.set_defaults(pki_func=_issue_user)

    q = sub.add_parser("rotate", parents=parents, help="a new key and certificate for a component, or a new CA",
                       description="Issue a new key and serial for the same subject and SANs; the CA stays and "
                                   "the old certificate stays valid until it expires. `rotate ca` starts a CA "
                                   "rotation (the new CA signs, ca.crt trusts both), `rotate ca --finish` ends it.")
    rotate = q.add_subparsers(dest="pki_rotate", metavar="node|user|scheduler|admin|etcd|all|ca|etcd-ca",
                              required=True)
    for kind, name_type in (("node", _node_name), ("user", _user_name)):
        r = rotate.add_parser(kind, parents=[*parents, validity], help=f"a {kind}'s certificate",
                              usage=f"{prog} rotate {kind} NAME [--validity D]")
        r.add_argument("name", type=_typed(name_type), metavar="NAME")
        r.set_defaults(pki_func=_rotate_leaves)
    for kind, text in (("scheduler", "the scheduler's certificate"), ("admin", "the admin's certificate"),
                       ("etcd", "etcd's server certificate and the scheduler's etcd client certificate"),
                       ("all", "every certificate in the directory (the CAs stay)")):
        r = rotate.add_parser(kind, parents=[*parents, validity], help=text,
                              usage=f"{prog} rotate {kind} [--validity D]")
        r.set_defaults(pki_func=_rotate_leaves, name=None)
    for kind in ("ca", "etcd-ca"):
        r = rotate.add_parser(kind, parents=parents, help=f"start (or --finish) a rotation of the {kind}",
                              usage=f"{prog} rotate {kind} [--finish [--force]] [--ca-validity D]")
        r.add_argument("--finish", action="store_true",
                       help="end the rotation: trust only the new CA (refused while a certificate here is "
                            "still signed by the old one)")
        r.add_argument("--force", action="store_true", help="with --finish: end it even so")
        r.add_argument("--ca-validity", type=_typed(_duration), metavar="DURATION",
                       help="the new CA's lifetime (default 10y)")
        r.set_defaults(pki_func=_rotate_ca)

    q = sub.add_parser("show", parents=parents, help="list the certificates and when they expire",
                       usage=f"{prog} show [--dir DIR] [-o table|json]")
    q.add_argument("-o", "--output", default="table", choices=["table", "json"])
    q.set_defaults(pki_func=_show)


def run(args: argparse.Namespace) -> int:
    return int(args.pki_func(args))


# --- the verbs ---------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _pki(args: argparse.Namespace) -> Any:
    from apimachinery.pki import PKI

    return PKI(Path(args.dir))


def _validity(args: argparse.Namespace, default: float | None) -> float | None:
    value = getattr(args, "validity", None)
    return default if value is None else float(value)


def _describe(pki: Any, issued: Any) -> str:
    from apimachinery.pki import describe_sans, describe_subject

    cert = issued.cert
    sans = ",".join(describe_sans(cert)) or "-"
    until = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    rel = issued.cert_path.relative_to(pki.dir).as_posix()
    return f"{rel}: {describe_subject(cert)} (SANs {sans}; serial {cert.serial_number:x}; until {until})"


def _init(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    issued = pki.init(scheduler_sans=args.scheduler_san, nodes=args.node, etcd_sans=args.etcd_san,
                      validity=_validity(args, lib.DEFAULT_LEAF_VALIDITY),
                      ca_validity=args.ca_validity or lib.DEFAULT_CA_VALIDITY, force=args.force)
    for which in ("cluster", "etcd"):
        ca = pki.load_ca(which)
        until = ca.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        _out(f"{pki.ca_cert_path(which).relative_to(pki.dir)}: {which} CA {lib.describe_subject(ca.cert)} "
             f"(until {until})")
    for one in issued:
        _out(_describe(pki, one))
    _out(f"wrote {2 + len(issued)} certificates and keys to {pki.dir} (keys 0600)")
    return 0


def _refuse_existing(pki: Any, slot: str, what: str, rotate: str, force: bool) -> None:
    from apimachinery.pki import PkiError

    if pki.cert_path(slot).exists() and not force:
        raise PkiError(f"{pki.cert_path(slot)} already exists: `orchctl pki rotate {rotate}` gives {what} a new "
                       "key with the same subject; pass --force to issue it again as asked")


def _issue_node(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    slot = lib.node_slot(args.name)
    _refuse_existing(pki, slot, f"node {args.name}", f"node {args.name}", args.force)
    issued = pki.issue(slot, lib.node_spec(args.name, args.address), _validity(args, lib.DEFAULT_LEAF_VALIDITY))
    _out(_describe(pki, issued))
    return 0


def _issue_user(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    slot = lib.user_slot(args.name)
    _refuse_existing(pki, slot, f"user {args.name}", f"user {args.name}", args.force)
    issued = pki.issue(slot, lib.user_spec(args.name, args.group), _validity(args, lib.DEFAULT_LEAF_VALIDITY))
    _out(_describe(pki, issued))
    return 0


def _rotate_leaves(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    kind = args.pki_rotate
    slots = {"node": lambda: [lib.node_slot(args.name)], "user": lambda: [lib.user_slot(args.name)],
             "scheduler": lambda: [lib.SCHEDULER], "admin": lambda: [lib.ADMIN],
             "etcd": lambda: [lib.ETCD_SERVER, lib.ETCD_SCHEDULER_CLIENT], "all": pki.leaf_slots}[kind]()
    if not slots:
        raise lib.PkiError(f"{pki.dir}: no certificates to rotate")
    for slot in slots:
        old = lib.read_cert(pki.cert_path(slot)) if pki.cert_path(slot).exists() else None
        issued = pki.rotate(slot, _validity(args, None))
        _out(_describe(pki, issued) + (f" replaces serial {old.serial_number:x}" if old is not None else ""))
    return 0


def _rotate_ca(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    which = "etcd" if args.pki_rotate == "etcd-ca" else "cluster"
    if args.force and not args.finish:
        raise lib.PkiError("--force only goes with --finish")
    if args.finish:
        ca = pki.finish_ca_rotation(which, force=args.force)
        _out(f"{pki.ca_cert_path(which).relative_to(pki.dir)} now trusts only {lib.describe_subject(ca.cert)}")
        return 0
    ca = pki.begin_ca_rotation(which, args.ca_validity or lib.DEFAULT_CA_VALIDITY)
    names = ", ".join(lib.describe_subject(c) for c in ca.bundle)
    _out(f"{pki.ca_cert_path(which).relative_to(pki.dir)} now trusts {names}; "
         f"{lib.describe_subject(ca.cert)} signs from now on.")
    _out("Next: let every component reload its trust bundle, then `orchctl pki rotate all` and let them reload "
         f"their certificates, then `orchctl pki rotate {args.pki_rotate} --finish`.")
    return 0


def _show(args: argparse.Namespace) -> int:
    from apimachinery import pki as lib

    pki = _pki(args)
    if not pki.dir.is_dir():
        raise lib.PkiError(f"{pki.dir}: no such directory (create it with `orchctl pki init --dir {pki.dir}`)")
    now = pki.now()
    rows: list[dict[str, Any]] = []
    for entry in pki.entries():
        left = lib.seconds_left(entry.cert, now)
        if entry.problem:
            status = entry.problem
        elif left <= SOON:
            status = "expires soon"
        else:
            status = "ok"
        if entry.signing:
            status += ", signing CA"
        rows.append({"certificate": entry.name, "subject": lib.describe_subject(entry.cert),
                     "sans": lib.describe_sans(entry.cert), "serial": f"{entry.cert.serial_number:x}",
                     "notAfter": entry.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "daysLeft": math.trunc(left / 86400), "secondsLeft": int(left), "status": status})
    if args.output == "json":
        _out(json.dumps(rows, indent=2))
        return 0
    if not rows:
        _out(f"no certificates in {pki.dir}")
        return 0
    from cli.printers import TableWriter

    table = [["CERTIFICATE", "SUBJECT", "SANS", "NOT AFTER", "DAYS LEFT", "STATUS"]]
    table += [[r["certificate"], r["subject"], ",".join(r["sans"]) or "-", r["notAfter"], str(r["daysLeft"]),
               r["status"]] for r in rows]
    _out(TableWriter().render(table))
    return 0
