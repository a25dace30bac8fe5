"""The cluster PKI: a CA, the certificates every component presents, and what TLS needs from them.

An orchestrator runs code as root on every node, so every connection is to be
mutual TLS (issue 7): each side proves who it is with a certificate signed by the
cluster CA, and the subject of the certificate *is* the caller's identity. This
module makes and reads those certificates with pyca/cryptography; it holds no
TLS wiring itself — the gRPC servers and channels take the PEM bytes and
credentials built here.

Layout on disk (like kubeadm's ``/etc/kubernetes/pki``)::

    <dir>/ca.crt                       cluster CA trust bundle: one CA, or two during a CA rotation
    <dir>/ca.key                       cluster CA signing key
    <dir>/scheduler.crt, .key          scheduler: serves the Cluster API and node protocol, dials agents
    <dir>/admin.crt, .key              orchctl as cluster admin (CN admin, O system:masters)
    <dir>/nodes/<name>.crt, .key       one per agent (CN system:node:<name>, O system:nodes)
    <dir>/users/<name>.crt, .key       other orchctl users (CN <name>, O <group>...)
    <dir>/etcd/ca.crt, ca.key          etcd's own CA (see below)
    <dir>/etcd/server.crt, .key        etcd serving (and its loopback client: serverAuth + clientAuth)
    <dir>/etcd/scheduler-client.crt, .key   the scheduler's client certificate for etcd

Keys are created 0600 (``O_CREAT|O_EXCL`` with the mode, never chmod-ed after the
bytes are in), certificates 0644; every file is written to a temporary name and
renamed into place, so a reader sees the old file or the new one, never half.

Why etcd has a CA of its own: etcd started with ``--client-cert-auth
--trusted-ca-file`` lets in *any* client whose certificate chains to that file.
With the cluster CA there, every node's certificate would open etcd — and
invariant 5 says agents hold no etcd credentials. kubeadm keeps a separate etcd CA
for the same reason.

Keys are ECDSA P-256: a 32-byte key and 64-byte signatures keep handshakes small, and
a mutual handshake costs each side about 180 µs of signing and verifying against
about 310 µs with RSA-2048, kubeadm's default (docs/security.md has the figures);
Go (etcd), BoringSSL (gRPC) and OpenSSL all support it.

Identities follow Kubernetes: a certificate's CN is the user name and each O a
group. A node is ``system:node:<name>`` in group ``system:nodes`` (what the
NodeRestriction admission plugin keys on); the admin is ``admin`` in
``system:masters``; the scheduler is ``system:scheduler`` in
``system:schedulers``. Names starting with ``system:`` are reserved to these.

Rotation of a leaf issues a new key and serial for the same subject and SANs;
the CA stays, and the old certificate stays valid until it expires, so a process
still holding it keeps working until it reloads. Rotation of a CA goes through
a trust bundle (``begin_ca_rotation``, re-issue every leaf, ``finish_ca_rotation``):
while ``ca.crt`` holds the old and the new CA, certificates of both are accepted.

Errors: ``PkiError`` (an ``OrchError``) for anything wrong with the files or the
request, with the path or the name in the message.

Gotchas:

* ``not_before`` is backdated by ``CLOCK_SKEW`` so that a node whose clock is a
  little behind the machine that issued its certificate does not refuse it as
  "not yet valid".
* cryptography limits a subject CN to 64 characters (X.509's upper bound), so a
  node name has at most 52 (64 minus ``system:node:``).
* Between writing a rotated key and its certificate a reader can see a new key
  with the old certificate. ``load_tls`` checks that they match and reads again.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apimachinery.errors import OrchError
from apimachinery.labels import validate_dns1123_subdomain

DEFAULT_DIR = Path("/etc/orch/pki")
DAY = 86400.0
DEFAULT_CA_VALIDITY = 10 * 365 * DAY
DEFAULT_LEAF_VALIDITY = 365 * DAY
MAX_VALIDITY = 100 * 365 * DAY  # a bound against typos (and "inf", which datetime cannot add)
#: How far ``not_before`` is backdated: clocks of nodes and the issuer differ a little.
CLOCK_SKEW = 300.0

NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
MASTERS_GROUP = "system:masters"
SCHEDULER_USER = "system:scheduler"
SCHEDULERS_GROUP = "system:schedulers"
ADMIN_USER = "admin"
ETCD_SCHEDULER_CLIENT_USER = "system:scheduler:etcd-client"

#: The longest subject CN cryptography writes (X.509's ub-common-name).
MAX_CN = 64
MAX_NODE_NAME = MAX_CN - len(NODE_USER_PREFIX)

KEY_MODE = 0o600
CERT_MODE = 0o644

AddressT = ipaddress.IPv4Address | ipaddress.IPv6Address
PrivateKey = ec.EllipticCurvePrivateKey
CAName = Literal["cluster", "etcd"]


class PkiError(OrchError):
    """A PKI file is missing, unreadable or inconsistent, or a request makes no sense."""

    code = grpc.StatusCode.FAILED_PRECONDITION


# --- what a certificate says -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafSpec:
    """Everything a leaf certificate says about its holder, and what it may be used for.

    ``server``/``client`` become the extendedKeyUsage serverAuth/clientAuth: BoringSSL
    and Go refuse a certificate presented for a use it does not list.
    """

    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[AddressT, ...] = ()
    server: bool = False
    client: bool = False

    @property
    def sans(self) -> tuple[str, ...]:
        return self.dns_names + tuple(str(ip) for ip in self.ip_addresses)


#: Every serving certificate answers to these, so a component on the same machine can
#: always dial 127.0.0.1 or localhost.
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS: tuple[AddressT, ...] = (ipaddress.ip_address("127.0.0.1"),)


def parse_san(text: str) -> str | AddressT:
    """An IP address, or else a DNS name (lower case, RFC 1123); ValueError says why not."""
    text = text.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    problem = validate_dns1123_subdomain(text)
    if problem:
        raise ValueError(f"{text!r} is neither an IP address nor a DNS name: {problem}")
    return text


def split_sans(values: Iterable[str | AddressT], *, loopback: bool) -> tuple[tuple[str, ...], tuple[AddressT, ...]]:
    """DNS names and IPs, each once and in the order given (loopback first when asked)."""
    dns: list[str] = list(LOOPBACK_DNS) if loopback else []
    ips: list[AddressT] = list(LOOPBACK_IPS) if loopback else []
    for value in values:
        parsed = parse_san(value) if isinstance(value, str) else value
        if isinstance(parsed, str):
            if parsed not in dns:
                dns.append(parsed)
        elif parsed not in ips:
            ips.append(parsed)
    return tuple(dns), tuple(ips)


def validate_node_name(name: str) -> None:
    """A node name fit for ``system:node:<name>`` and for ``nodes/<name>.crt``."""
    problem = validate_dns1123_subdomain(name)
    if problem:
        raise ValueError(f"invalid node name: {problem}")
    if len(name) > MAX_NODE_NAME:
        raise ValueError(f"node name {name!r} is {len(name)} characters; a certificate's subject "
                         f"{NODE_USER_PREFIX}<name> allows at most {MAX_NODE_NAME}")


_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/-]*")


def validate_user_name(name: str) -> None:
    """A user name: also a file name (``users/<name>.crt``), so no slashes; ``system:`` is reserved."""
    if name.startswith("system:"):
        raise ValueError(f"invalid user name {name!r}: names starting with 'system:' are reserved for "
                         "the cluster's own components")
    if not _USER_NAME.fullmatch(name):
        raise ValueError(f"invalid user name {name!r}: use letters, digits, '.', '_', '@' and '-', "
                         "starting with a letter or digit")
    if len(name) > MAX_CN:
        raise ValueError(f"invalid user name {name!r}: at most {MAX_CN} characters")


def validate_group(group: str) -> None:
    if not _GROUP.fullmatch(group) or len(group) > MAX_CN:
        raise ValueError(f"invalid group {group!r}: use letters, digits and '.', '_', '@', ':', '/', '-' "
                         f"(at most {MAX_CN} characters, starting with a letter or digit)")


def scheduler_spec(sans: Iterable[str | AddressT] = ()) -> LeafSpec:
    """The scheduler serves gRPC and also dials agents (logs, exec) and etcd: both usages."""
    dns, ips = split_sans(sans, loopback=True)
    return LeafSpec(SCHEDULER_USER, (SCHEDULERS_GROUP,), dns, ips, server=True, client=True)


def node_spec(name: str, addresses: Iterable[str | AddressT] = ()) -> LeafSpec:
    """An agent: a client of the scheduler, and a server of logs/exec the scheduler dials."""
    validate_node_name(name)
    dns, ips = split_sans([name, *addresses], loopback=True)
    return LeafSpec(NODE_USER_PREFIX + name, (NODES_GROUP,), dns, ips, server=True, client=True)


def admin_spec() -> LeafSpec:
    return LeafSpec(ADMIN_USER, (MASTERS_GROUP,), client=True)


def user_spec(name: str, groups: Iterable[str] = ()) -> LeafSpec:
    validate_user_name(name)
    unique = tuple(dict.fromkeys(groups))
    for group in unique:
        validate_group(group)
    return LeafSpec(name, unique, client=True)


def etcd_server_spec(sans: Iterable[str | AddressT] = ()) -> LeafSpec:
    """etcd's serving certificate; clientAuth too, because etcd's gRPC gateway dials
    etcd itself with it when ``--client-cert-auth`` is on (kubeadm's has both)."""
    dns, ips = split_sans(sans, loopback=True)
    return LeafSpec("etcd-server", (), dns, ips, server=True, client=True)


def etcd_client_spec() -> LeafSpec:
    return LeafSpec(ETCD_SCHEDULER_CLIENT_USER, (SCHEDULERS_GROUP,), client=True)


def spec_of(cert: x509.Certificate) -> LeafSpec:
    """What ``cert`` says, as the spec that would issue it again (for rotation)."""
    identity = identity_of(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    addresses = tuple(ip for ip in ips if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)))
    return LeafSpec(identity.user, identity.groups, dns, addresses,
                    server=ExtendedKeyUsageOID.SERVER_AUTH in usages,
                    client=ExtendedKeyUsageOID.CLIENT_AUTH in usages)


# --- identity --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is: Kubernetes' user.Info (name and groups)."""

    user: str
    groups: tuple[str, ...] = ()

    @property
    def node_name(self) -> str | None:
        """The node this identity speaks for, or None: Kubernetes' node authorizer wants
        both the ``system:node:`` name and the ``system:nodes`` group."""
        if self.user.startswith(NODE_USER_PREFIX) and NODES_GROUP in self.groups:
            return self.user[len(NODE_USER_PREFIX):] or None
        return None

    @property
    def is_scheduler(self) -> bool:
        return self.user == SCHEDULER_USER and SCHEDULERS_GROUP in self.groups

    @property
    def is_admin(self) -> bool:
        return MASTERS_GROUP in self.groups


def identity_of(cert: x509.Certificate) -> Identity:
    """The user (first CN) and groups (every O, in order) of ``cert``'s subject."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    user = _text(cns[0].value) if cns else ""
    groups = tuple(_text(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return Identity(user, groups)


def identity_from_pem(pem: bytes) -> Identity:
    return identity_of(x509.load_pem_x509_certificate(pem))


def peer_identity(context: Any) -> Identity | None:
    """The identity of the peer of a gRPC call (``grpc.ServicerContext`` or the aio one),
    from the client certificate the TLS handshake verified; None on a connection without one."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    return identity_from_pem(pems[0])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- making certificates ----------------------------------------------------------------


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _utc(when: datetime.datetime | None) -> datetime.datetime:
    return _now() if when is None else when.astimezone(datetime.UTC)


def _key_ids(public: Any) -> tuple[x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier]:
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    return ski, x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def create_ca(common_name: str = "", validity: float = DEFAULT_CA_VALIDITY,
              now: datetime.datetime | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA. Each CA gets a name of its own (``orch-ca-<random>``) so two CAs
    in one trust bundle are told apart by name as well as by key identifier."""
    common_name = common_name or f"orch-ca-{secrets.token_hex(4)}"
    key = new_key()
    start = _utc(now)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski, aki = _key_ids(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(seconds=CLOCK_SKEW))
            .not_valid_after(start + datetime.timedelta(seconds=validity))
            # pathlen 0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(aki, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


@dataclass(frozen=True)
class CA:
    """A CA that signs (``cert``, ``key``) and the bundle of every CA trusted beside it."""

    cert: x509.Certificate
    key: PrivateKey
    bundle: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not self.bundle:
            object.__setattr__(self, "bundle", (self.cert,))


def issue(ca: CA, spec: LeafSpec, validity: float = DEFAULT_LEAF_VALIDITY, *,
          now: datetime.datetime | None = None, key: PrivateKey | None = None,
          ) -> tuple[x509.Certificate, PrivateKey]:
    """A new leaf for ``spec`` signed by ``ca``: a new key (unless given) and a random serial.

    ``not_after`` never passes the CA's own: a leaf that outlives its CA verifies nowhere.
    """
    key = key or new_key()
    start = _utc(now)
    not_after = min(start + datetime.timedelta(seconds=validity), ca.cert.not_valid_after_utc)
    # O before CN, as Go writes a subject: its RFC 4514 form then reads "CN=…,O=…".
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in spec.organizations]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else [])
    if not usages:
        raise PkiError(f"certificate {spec.common_name!r}: neither server nor client use")
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name(subject))
               .issuer_name(ca.cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start - datetime.timedelta(seconds=CLOCK_SKEW))
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # ECDSA keys sign (the handshake); they never encipher a key, so only digitalSignature.
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    general: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    general += [x509.IPAddress(ip) for ip in spec.ip_addresses]
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


# --- checking certificates --------------------------------------------------------------


def seconds_left(cert: x509.Certificate, now: datetime.datetime | None = None) -> float:
    return (cert.not_valid_after_utc - _utc(now)).total_seconds()


def expires_within(cert: x509.Certificate, seconds: float, now: datetime.datetime | None = None) -> bool:
    """Whether ``cert`` is expired or will be within ``seconds`` (the time to rotate it)."""
    return seconds_left(cert, now) <= seconds


def issuer_in(cert: x509.Certificate, bundle: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The CA of ``bundle`` whose key signed ``cert``, if any."""
    for ca in bundle:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def check(cert: x509.Certificate, bundle: Sequence[x509.Certificate],
          now: datetime.datetime | None = None) -> str | None:
    """None when ``cert`` is within its validity and signed by a CA of ``bundle`` that is
    too; else why not. (Our chains are one CA deep: this is the whole verification.)"""
    at = _utc(now)
    if at > cert.not_valid_after_utc:
        return f"expired at {_iso(cert.not_valid_after_utc)}"
    if at < cert.not_valid_before_utc:
        return f"not valid before {_iso(cert.not_valid_before_utc)}"
    ca = issuer_in(cert, bundle)
    if ca is None:
        return "not signed by a CA of the trust bundle"
    if not (ca.not_valid_before_utc <= at <= ca.not_valid_after_utc):
        return f"its CA {ca.subject.rfc4514_string()} expired at {_iso(ca.not_valid_after_utc)}"
    return None


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def same_key(cert: x509.Certificate, key: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))


# --- files ----------------------------------------------------------------------------------


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, with ``mode`` from the first byte on.

    The temporary file is created ``O_EXCL`` with ``mode`` (and ``fchmod``-ed to it
    before anything is written, so a tight umask cannot leave the owner unable to
    read it), fsync-ed, and renamed over ``path``; then the directory is fsync-ed so
    the rename survives a crash. A private key is never readable by others, not
    even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_key(path: Path, key: PrivateKey) -> None:
    atomic_write(path, key_pem(key), KEY_MODE)


def write_certs(path: Path, certs: Iterable[x509.Certificate]) -> None:
    atomic_write(path, certs_pem(certs), CERT_MODE)


def _read_pem(path: Path, what: str) -> bytes:
    """The bytes of ``path``; PkiError naming it (and ``what`` it should hold) when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise PkiError(f"{path}: cannot read: {e.strerror or e}") from e


def read_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a trust bundle holds several)."""
    data = _read_pem(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise PkiError(f"{path}: not a PEM certificate: {e}") from e
    return certs


def read_cert(path: Path) -> x509.Certificate:
    return read_certs(path)[0]


def read_key(path: Path) -> PrivateKey:
    data = _read_pem(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise PkiError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: a {type(key).__name__}; orch's PKI uses ECDSA keys")
    return key


# --- the directory ------------------------------------------------------------------------

#: Where each well-known leaf lives (``<dir>/<slot>.crt`` and ``.key``) and which CA signs it.
SCHEDULER, ADMIN = "scheduler", "admin"
ETCD_SERVER, ETCD_SCHEDULER_CLIENT = "etcd/server", "etcd/scheduler-client"
CA_FILES: dict[CAName, str] = {"cluster": "ca", "etcd": "etcd/ca"}


def node_slot(name: str) -> str:
    validate_node_name(name)
    return f"nodes/{name}"


def user_slot(name: str) -> str:
    validate_user_name(name)
    return f"users/{name}"


def ca_of_slot(slot: str) -> CAName:
    return "etcd" if slot.startswith("etcd/") else "cluster"


@dataclass(frozen=True, slots=True)
class Issued:
    """One leaf written to disk."""

    slot: str
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclass(frozen=True, slots=True)
class Entry:
    """One certificate found in the directory, for ``orchctl pki show``."""

    name: str  # e.g. "nodes/a.crt", or "ca.crt[1]" for the second CA of a bundle
    cert: x509.Certificate
    is_ca: bool
    problem: str | None  # None: valid and trusted (see ``check``)
    signing: bool = False  # a CA whose key is the one that signs now


@dataclass
class PKI:
    """The PKI directory: reads and writes the layout in the module docstring."""

    dir: Path
    now: Callable[[], datetime.datetime] = field(default=_now)

    def cert_path(self, slot: str) -> Path:
        return self.dir / f"{slot}.crt"

    def key_path(self, slot: str) -> Path:
        return self.dir / f"{slot}.key"

    def ca_cert_path(self, which: CAName = "cluster") -> Path:
        return self.cert_path(CA_FILES[which])

    # -- CAs

    def exists(self) -> bool:
        return any(self.ca_cert_path(w).exists() or self.key_path(CA_FILES[w]).exists() for w in CA_FILES)

    def load_ca(self, which: CAName = "cluster") -> CA:
        """The signing CA: the certificate of the bundle whose public key is ``ca.key``'s."""
        slot = CA_FILES[which]
        bundle = read_certs(self.cert_path(slot))
        key = read_key(self.key_path(slot))
        for cert in bundle:
            if same_key(cert, key):
                return CA(cert, key, tuple(bundle))
        raise PkiError(f"{self.key_path(slot)} belongs to none of the {len(bundle)} certificate(s) in "
                       f"{self.cert_path(slot)}")

    def write_ca(self, which: CAName, ca: CA) -> None:
        """Bundle first, then the key: at every instant the key on disk matches a CA in the bundle."""
        slot = CA_FILES[which]
        write_certs(self.cert_path(slot), ca.bundle)
        write_key(self.key_path(slot), ca.key)

    def _new_ca(self, which: CAName, validity: float) -> tuple[x509.Certificate, PrivateKey]:
        prefix = "orch-etcd-ca" if which == "etcd" else "orch-ca"
        return create_ca(f"{prefix}-{secrets.token_hex(4)}", validity, self.now())

    def create_ca(self, which: CAName, validity: float = DEFAULT_CA_VALIDITY) -> CA:
        ca = CA(*self._new_ca(which, validity))
        self.write_ca(which, ca)
        return ca

    # -- leaves

    def issue(self, slot: str, spec: LeafSpec, validity: float = DEFAULT_LEAF_VALIDITY,
              ca: CA | None = None) -> Issued:
        """Issue and write ``<slot>.key`` then ``<slot>.crt`` (see the module gotchas)."""
        ca = ca or self.load_ca(ca_of_slot(slot))
        cert, key = issue(ca, spec, validity, now=self.now())
        write_key(self.key_path(slot), key)
        write_certs(self.cert_path(slot), [cert])
        return Issued(slot, cert, self.cert_path(slot), self.key_path(slot))

    def rotate(self, slot: str, validity: float | None = None) -> Issued:
        """A new key and serial for the leaf at ``slot``: same subject, SANs and usages,
        same lifetime unless ``validity`` is given. The old certificate is not revoked:
        it stays valid until it expires, so whoever holds it keeps working meanwhile."""
        path = self.cert_path(slot)
        if not path.exists():
            raise PkiError(f"{path}: no such certificate to rotate")
        old = read_cert(path)
        if validity is None:
            validity = (old.not_valid_after_utc - old.not_valid_before_utc).total_seconds() - CLOCK_SKEW
        return self.issue(slot, spec_of(old), max(validity, 1.0))

    def leaf_slots(self) -> list[str]:
        """Every leaf in the directory (``<slot>.crt`` with its ``.key``), CAs left out."""
        slots = []
        for crt in sorted(self.dir.rglob("*.crt")):
            slot = crt.relative_to(self.dir).with_suffix("").as_posix()
            if slot not in CA_FILES.values() and self.key_path(slot).exists():
                slots.append(slot)
        return slots

    # -- CA rotation

    def begin_ca_rotation(self, which: CAName = "cluster", validity: float = DEFAULT_CA_VALIDITY) -> CA:
        """Step 1: a new CA signs from now on; the bundle trusts it *and* every CA before it,
        so leaves of both are accepted while components reload and leaves are re-issued."""
        old = self.load_ca(which)
        if len(old.bundle) > 1:
            raise PkiError(f"{self.ca_cert_path(which)} already trusts {len(old.bundle)} CAs: a rotation is under "
                           "way; finish it first")
        cert, key = self._new_ca(which, validity)
        ca = CA(cert, key, (cert, *old.bundle))
        self.write_ca(which, ca)
        return ca

    def stale_leaves(self, which: CAName = "cluster") -> list[str]:
        """Leaves of ``which`` not signed by its signing CA: what ``finish_ca_rotation`` waits for."""
        ca = self.load_ca(which)
        return [slot for slot in self.leaf_slots()
                if ca_of_slot(slot) == which and issuer_in(read_cert(self.cert_path(slot)), [ca.cert]) is None]

    def finish_ca_rotation(self, which: CAName = "cluster", *, force: bool = False) -> CA:
        """Step 3: trust only the signing CA. Refused while a leaf here is still signed by an
        old one (it would stop working), unless ``force``."""
        stale = self.stale_leaves(which)
        if stale and not force:
            raise PkiError(f"still signed by an old CA: {', '.join(s + '.crt' for s in stale)}; rotate them first "
                           "(orchctl pki rotate all) or pass --force")
        ca = self.load_ca(which)
        ca = CA(ca.cert, ca.key, (ca.cert,))
        self.write_ca(which, ca)
        return ca

    # -- the whole set

    def init(self, *, scheduler_sans: Iterable[str | AddressT] = (),
             nodes: dict[str, Sequence[str | AddressT]] | None = None,
             etcd_sans: Iterable[str | AddressT] = (), validity: float = DEFAULT_LEAF_VALIDITY,
             ca_validity: float = DEFAULT_CA_VALIDITY, force: bool = False) -> list[Issued]:
        """Both CAs and every leaf of the layout. An existing CA is kept from being replaced
        unless ``force``; then every leaf already here is issued again from the new CAs
        (same subjects and SANs), so nothing is left signed by a CA no longer trusted."""
        if self.exists() and not force:
            raise PkiError(f"{self.dir} already holds a CA ({self.ca_cert_path()}); "
                           "pass --force to replace it and re-issue every certificate")
        specs: dict[str, LeafSpec] = {}
        if force:
            for slot in self.leaf_slots():
                with contextlib.suppress(PkiError):
                    specs[slot] = spec_of(read_cert(self.cert_path(slot)))
        specs[SCHEDULER] = scheduler_spec(scheduler_sans)
        specs[ADMIN] = admin_spec()
        specs[ETCD_SERVER] = etcd_server_spec(etcd_sans)
        specs[ETCD_SCHEDULER_CLIENT] = etcd_client_spec()
        for name, addresses in (nodes or {}).items():
            specs[node_slot(name)] = node_spec(name, addresses)
        self.dir.mkdir(parents=True, exist_ok=True)
        cas = {w: self.create_ca(w, ca_validity) for w in CA_FILES}
        return [self.issue(slot, spec, validity, cas[ca_of_slot(slot)]) for slot, spec in specs.items()]

    def entries(self) -> list[Entry]:
        """Every certificate in the directory, each checked against its CA bundle."""
        out: list[Entry] = []
        bundles: dict[CAName, list[x509.Certificate]] = {}
        signing: dict[CAName, x509.Certificate | None] = {}
        for which, slot in CA_FILES.items():
            if self.cert_path(slot).exists():
                bundles[which] = read_certs(self.cert_path(slot))
                try:
                    signing[which] = self.load_ca(which).cert
                except PkiError:
                    signing[which] = None
        now = self.now()
        for crt in sorted(self.dir.rglob("*.crt")):
            rel = crt.relative_to(self.dir)
            slot = rel.with_suffix("").as_posix()
            certs = read_certs(crt)
            ca_name = {s: w for w, s in CA_FILES.items()}.get(slot)
            if ca_name is not None:
                for i, cert in enumerate(certs):
                    name = rel.as_posix() + (f"[{i}]" if len(certs) > 1 else "")
                    out.append(Entry(name, cert, True, check(cert, [cert], now), cert == signing.get(ca_name)))
                continue
            bundle = bundles.get(ca_of_slot(slot), [])
            problem = check(certs[0], bundle, now) if bundle else f"no {self.ca_cert_path(ca_of_slot(slot))}"
            out.append(Entry(rel.as_posix(), certs[0], False, problem))
        return out


# --- TLS material for gRPC ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Where one component's certificate, key and trust bundle are."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def for_slot(cls, pki_dir: Path, slot: str) -> TLSFiles:
        pki = PKI(Path(pki_dir))
        return cls(pki.cert_path(slot), pki.key_path(slot), pki.ca_cert_path(ca_of_slot(slot)))


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """The PEM bytes gRPC's ``ssl_*_credentials`` take."""

    private_key: bytes
    certificate_chain: bytes
    root_certificates: bytes

    def server_credentials(self, *, require_client_auth: bool = True) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)],
                                           root_certificates=self.root_certificates,
                                           require_client_auth=require_client_auth)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates,
                                            private_key=self.private_key,
                                            certificate_chain=self.certificate_chain)


def load_tls(files: TLSFiles, *, attempts: int = 5, pause: float = 0.05) -> TLSMaterial:
    """Read a certificate, its key and the trust bundle; the key must match the certificate.

    A mismatch is read again a few times: a rotation writes the key, then the
    certificate, and a reader may fall between the two.
    """
    for attempt in range(attempts):
        key_bytes = _read(files.key)
        cert_bytes = _read(files.cert)
        ca_bytes = _read(files.ca)
        try:
            cert = x509.load_pem_x509_certificate(cert_bytes)
            key = serialization.load_pem_private_key(key_bytes, password=None)
        except (ValueError, TypeError) as e:
            raise PkiError(f"{files.cert} / {files.key}: not a PEM certificate and key: {e}") from e
        if same_key(cert, key):
            return TLSMaterial(key_bytes, cert_bytes, ca_bytes)
        if attempt + 1 < attempts:
            time.sleep(pause)
    raise PkiError(f"{files.key} does not belong to {files.cert}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such file") from None
    except OSError as e:
        raise PkiError(f"{path}: cannot read: {e.strerror or e}") from e


def tls_files_from_flags(cert: Path | None, key: Path | None, ca: Path | None, *, ca_flag: str,
                         pki_dir: Path | None, slot: str, insecure: bool, without: str) -> TLSFiles | None:
    """A component's TLS files from its flags: ``--tls-cert-file``, ``--tls-private-key-file``
    and ``ca_flag`` (each beats ``--pki-dir``'s file of ``slot``); None with ``--insecure``.
    ValueError naming the flags when material is missing or ``--insecure`` comes with some:
    a component never goes plaintext unless told so. ``without``: what the message says
    plaintext would give away."""
    given = {"--tls-cert-file": cert, "--tls-private-key-file": key, ca_flag: ca}
    if insecure:
        named = [flag for flag, value in given.items() if value is not None] + (["--pki-dir"] if pki_dir else [])
        if named:
            raise ValueError(f"--insecure is plaintext; it cannot be given with {', '.join(named)}")
        return None
    if pki_dir is not None:
        layout = TLSFiles.for_slot(pki_dir, slot)
        return TLSFiles(cert or layout.cert, key or layout.key, ca or layout.ca)
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == len(given):
        raise ValueError(f"no TLS material: give --pki-dir DIR, or --tls-cert-file, --tls-private-key-file and "
                         f"{ca_flag} (orchctl pki init makes them); or --insecure for plaintext, which {without}")
    if cert is None or key is None or ca is None:
        raise ValueError(f"{', '.join(missing)} missing: TLS needs --tls-cert-file, --tls-private-key-file and "
                         f"{ca_flag} together (or --pki-dir DIR)")
    return TLSFiles(cert, key, ca)


FilesStamp = tuple[tuple[int, int], ...]


def files_stamp(files: TLSFiles) -> FilesStamp:
    """(mtime, size) of the certificate, key and CA bundle (zeros for a missing one): what a
    rotation changes, so a process knows when to read them again."""
    out = []
    for path in (files.cert, files.key, files.ca):
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


def reloading_server_credentials(files: TLSFiles, *, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """Server credentials that pick up a rotated certificate or trust bundle without a restart.

    gRPC asks the fetcher before each new handshake; it returns a new configuration
    when any of the three files changed (by mtime and size), else None ("keep the
    current one"). Connections already open keep the certificate they began with:
    rotation drops nobody. A file caught mid-rotation (key and certificate not
    matching) is skipped until the next handshake.
    """
    def stamp() -> FilesStamp:
        return files_stamp(files)

    def configuration(material: TLSMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.certificate_chain)], root_certificates=material.root_certificates)

    seen = [stamp()]

    def fetch() -> Any:
        now = stamp()
        if now == seen[0]:
            return None
        try:
            material = load_tls(files, attempts=1)
        except PkiError:
            return None  # mid-rotation or broken: keep serving with what we have
        seen[0] = now
        return configuration(material)

    return grpc.dynamic_ssl_server_credentials(configuration(load_tls(files)), fetch,
                                               require_client_authentication=require_client_auth)


# --- durations -----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|y)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "y": 365 * DAY}


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``8760h``, ``365d``, ``10y``, ``1d12h`` (a bare number is seconds)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 30m, 8760h, 365d or 10y") from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if not value > 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0")
    if value > MAX_VALIDITY:
        raise ValueError(f"invalid duration {text!r}: at most 100y")
    return value


# --- describing ------------------------------------------------------------------------------


def describe_sans(cert: x509.Certificate) -> list[str]:
    spec = spec_of(cert)
    return list(spec.dns_names) + [str(ip) for ip in spec.ip_addresses]


def describe_subject(cert: x509.Certificate) -> str:
    """``CN=<user>,O=<group>,…`` in the order the identity reads them (RFC 4514's reversed
    order would list the groups backwards)."""
    identity = identity_of(cert)
    return ",".join([f"CN={identity.user}", *(f"O={g}" for g in identity.groups)])
