"""Who is calling the Cluster API, what they may do, and the record of it (issue 7).

Three steps for every call, in kube-apiserver's order (docs/rbac.md has the tables):

1. **Authentication** (``Authenticator``): a bearer token (``authorization: Bearer
   <token>`` metadata) looked up in the token file (``--token-auth-file``,
   kube-apiserver's CSV: ``token,user,uid,"group1,group2"``), where an unknown or
   malformed token is UNAUTHENTICATED; else the client certificate the TLS handshake
   verified (user = CN, groups = O; ``apimachinery.pki``); else the caller is anonymous
   (see the gotchas for why the token comes first). An
   anonymous caller on a *plaintext* connection — only a scheduler started with
   ``--insecure`` has one — is cluster admin, as on kube-apiserver's old insecure
   port; on a TLS connection it is UNAUTHENTICATED. The decision is made from the
   connection each call came on, not from a flag, so no configuration can open a TLS
   port to anonymous callers. Every authenticated user is also in
   ``system:authenticated``, so a binding can name everyone.
2. **Authorisation** (``Authorizer``), shaped like Kubernetes RBAC: a request is a
   verb on a resource in a namespace (``Attributes``); four built-in roles (``view``,
   ``edit``, ``admin``, ``cluster-admin``, see ``ROLES``) are bound to users and groups
   in listed namespaces or cluster-wide by the ``--authorization-config`` file.
   ``system:masters`` and ``system:schedulers`` are always cluster admin; nodes
   (``system:nodes``) have no Cluster API access at all — they speak the node
   protocol. Anything no binding allows is refused (PERMISSION_DENIED), with the
   missing permission in the message, as kubectl says it.
3. **Audit** (``scheduler.audit``): one record per call that mutates or is refused
   (reads too with ``--audit-log-reads``), written when the call ends, with its
   status code; a long-running stream (Watch, PodLogs, PodExec) is recorded once,
   when it is allowed and starts.

``scheduler.api`` maps each method onto attributes and asks a ``Call`` (one per
request, from ``AccessControl.call``) to authorise them.

Errors::

    OrchError
     ├── Unauthenticated   UNAUTHENTICATED     no credentials, or an unknown or malformed token
     ├── Forbidden         PERMISSION_DENIED   authenticated, but no binding allows it
     └── ValidationError
          └── ConfigError  a token file or authorization config is wrong (names the line or field)

Gotchas:

* **A token beats a certificate**, where kube-apiserver tries the certificate first.
  kube-apiserver *requests* a client certificate but does not require one, so a token
  user connects without any; gRPC Python has no such mode: ``require_client_auth=True``
  requires one, ``False`` does not even ask (the certificate a client has is then
  ignored). On the scheduler's mutual-TLS port every caller presents a certificate,
  so with kube's order a token would never be read. Here the certificate gets the
  caller through the handshake and a token, when given, says who it is (the record
  keeps the certificate's user as ``certificate``). No escalation: whoever sends a
  token holds that user's credential anyway; a bad token is refused, never passed over
  for the certificate.
* Tokens are kept as SHA-256 digests, so the scheduler's memory holds no token, and
  a lookup compares digests, not secrets.
* The files are read once, at start-up (as kube-apiserver reads its token file):
  restart the scheduler to change users or bindings.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml

from apimachinery import pki
from apimachinery.errors import FieldError, ForbiddenError, OrchError, UnauthenticatedError, ValidationError
from apimachinery.labels import describe_value, did_you_mean, validate_dns1123_label
from apimachinery.meta import KINDS
from scheduler.audit import DEFAULT_MAX_BACKUPS, AuditLog

log = logging.getLogger(__name__)

AUTHENTICATED_GROUP = "system:authenticated"
ANONYMOUS_USER = "system:anonymous"
UNAUTHENTICATED_GROUP = "system:unauthenticated"


# The API's refusals, as apimachinery.errors names them (orchctl turns them back into these).
Unauthenticated = UnauthenticatedError
Forbidden = ForbiddenError


class ConfigError(ValidationError):
    """A token file or an authorization config is wrong; every problem names its line or field."""


# --- users ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller: Kubernetes' user.Info, and how it proved who it is."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    via: str = "x509"  # x509 | token | insecure
    certificate: str = ""  # a token user's: the client certificate's user it came with, if any

    @property
    def all_groups(self) -> tuple[str, ...]:
        """The groups bindings are matched against: the credential's, and ``system:authenticated``
        for everyone who proved who they are."""
        if self.via == "insecure" or AUTHENTICATED_GROUP in self.groups:
            return self.groups
        return (*self.groups, AUTHENTICATED_GROUP)

    @property
    def is_node(self) -> bool:
        """Any member of system:nodes, with or without a node name: nodes are kept out whole."""
        return pki.NODES_GROUP in self.groups

    def __str__(self) -> str:
        """``user "bob" (groups: team-a)``, as the start of a refusal."""
        shown = [g for g in self.groups if g != AUTHENTICATED_GROUP]
        return f"user {_q(self.name)}" + (f" (groups: {', '.join(shown)})" if shown else "")


#: The caller of a plaintext connection (``--insecure``): cluster admin, and it says so.
INSECURE_ADMIN = User(ANONYMOUS_USER, (UNAUTHENTICATED_GROUP, pki.MASTERS_GROUP), via="insecure")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# --- authentication -------------------------------------------------------------------------


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_token_file(text: str, source: str = "token file") -> dict[str, User]:
    """Users by the SHA-256 of their token, from kube-apiserver's ``--token-auth-file`` CSV:
    ``token,user,uid[,"group1,group2"]`` per line. Blank lines and lines starting with
    ``#`` are skipped; a duplicate token is refused (which user would it be?)."""
    users: dict[str, User] = {}
    first_line: dict[str, int] = {}
    errors: list[FieldError] = []
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
                continue
            where = f"line {line}"
            if len(row) < 3:
                errors.append(FieldError(where, f"has {len(row)} column{'s' if len(row) != 1 else ''}; expected "
                                                'token,user,uid[,"group1,group2"]'))
                continue
            token, name, uid = row[0].strip(), row[1].strip(), row[2].strip()
            groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
            if not token:
                errors.append(FieldError(f"{where}: token", "is empty"))
            if not name:
                errors.append(FieldError(f"{where}: user", "is empty"))
            if not token or not name:
                continue
            digest = token_digest(token)
            if digest in users:
                errors.append(FieldError(f"{where}: token", f"is also the token of line {first_line[digest]}"))
                continue
            users[digest] = User(name, groups, uid, via="token")
            first_line[digest] = line
    except csv.Error as e:
        errors.append(FieldError(f"line {reader.line_num}", f"not CSV: {e}"))
    if errors:
        raise ConfigError(errors, context=source)
    return users


def load_token_file(path: str | Path) -> dict[str, User]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(FieldError("", f"cannot read it: {getattr(e, 'strerror', None) or e}"),
                          context=str(path)) from e
    return parse_token_file(text, str(path))


def bearer_token(metadata: Iterable[Any]) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, None without one;
    Unauthenticated when the metadata is there but not a bearer token."""
    values = [m.value for m in metadata if m.key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0] if isinstance(values[0], str) else values[0].decode("utf-8", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated('malformed authorization header: expected "Bearer <token>"')
    return token


#: Client certificates seen, by their PEM: parsing one costs more than the rest of an
#: authorisation, and a client sends the same one on every call of a connection.
_MAX_CACHED_IDENTITIES = 1024


class Authenticator:
    """``authenticate(context)``: the User a call comes from, or Unauthenticated."""

    def __init__(self, tokens: Mapping[str, User] | None = None, *, plaintext_is_admin: bool = True) -> None:
        self.tokens = tokens
        self.plaintext_is_admin = plaintext_is_admin
        self._identities: dict[bytes, User] = {}

    def authenticate(self, context: grpc.aio.ServicerContext) -> User:
        auth = context.auth_context() or {}
        pems = auth.get("x509_pem_cert") or []
        token = bearer_token(context.invocation_metadata() or ())
        if token is not None:  # before the certificate: see the module's gotchas
            if self.tokens is None:
                raise Unauthenticated("bearer tokens are not accepted here: the scheduler has no --token-auth-file")
            user = self.tokens.get(token_digest(token))
            if user is None:
                raise Unauthenticated("invalid bearer token")
            return replace(user, certificate=self._certificate_user(pems[0]).name) if pems else user
        if pems:
            return self._certificate_user(pems[0])
        # Fail closed: only a connection gRPC says is plaintext counts as one.
        if auth.get("transport_security_type") == [b"insecure"] and self.plaintext_is_admin:
            return INSECURE_ADMIN
        raise Unauthenticated("no client certificate and no bearer token: anonymous requests are not allowed")

    def _certificate_user(self, pem: bytes) -> User:
        user = self._identities.get(pem)
        if user is None:
            try:
                identity = pki.identity_from_pem(pem)
            except ValueError as e:  # the handshake verified it, so this is not expected: say so, fail closed
                log.error("a client certificate the TLS handshake accepted cannot be read: %s", e)
                raise Unauthenticated("the client certificate cannot be read") from e
            user = User(identity.user, identity.groups, via="x509")
            if len(self._identities) >= _MAX_CACHED_IDENTITIES:
                self._identities.clear()
            self._identities[pem] = user
        return user


# --- what a request asks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attributes:
    """One permission a request needs: ``verb`` on ``resource`` (a kind's plural, or
    ``pods/log``, ``pods/exec``, ``pods/metrics``, ``nodes/metrics``, ``images``) in
    ``namespace``. A namespaced resource with ``namespace`` None is every namespace
    (List and Watch with none given)."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str = ""
    namespaced: bool = True

    def __str__(self) -> str:
        """``delete deployments in namespace "team-b"``: what a refusal says is missing."""
        verb = "create or update" if self.verb == APPLY else self.verb
        if not self.namespaced:
            return f"{verb} {self.resource} at the cluster scope"
        if self.namespace is None:
            return f"{verb} {self.resource} across all namespaces"
        return f"{verb} {self.resource} in namespace {_q(self.namespace)}"

    def record(self) -> dict[str, Any]:
        return {"verb": self.verb, "resource": self.resource, "namespace": self.namespace, "name": self.name or None}


# --- roles and bindings ---------------------------------------------------------------------

#: Not a verb of any role: an applied object that needs create (new) or update (there),
#: before it is known which. ``Call.authorize`` never grants it; ``scheduler.api`` asks
#: for create and update and records the one the registry did.
APPLY = "apply"
READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete")
ANY = "*"


@dataclass(frozen=True, slots=True)
class Rule:
    verbs: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, verb: str, resource: str) -> bool:
        return (ANY in self.verbs or verb in self.verbs) and (ANY in self.resources or resource in self.resources)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    rules: tuple[Rule, ...]
    summary: str

    def allows(self, verb: str, resource: str) -> bool:
        return any(rule.allows(verb, resource) for rule in self.rules)


def _namespaced_kinds() -> tuple[str, ...]:
    return tuple(k.plural for k in KINDS.values() if k.namespaced)


# Bound in a namespace, a role reaches the namespaced resources of that namespace only;
# cluster-scoped resources (nodes, priorityclasses, images, metrics of nodes) are reached
# only through a cluster-wide binding, as a Kubernetes RoleBinding never reaches them.
_VIEW_RULES = (
    # namespaces: readable like nodes (cluster-wide); writable by cluster-admin only, since
    # whoever labels a namespace `privileged` lifts its pod security level (docs/pod-security.md).
    Rule(READ, ("pods", "deployments", "events", "controllerrevisions", "nodes", "priorityclasses", "namespaces")),
    Rule(("get",), ("pods/log", "pods/metrics", "nodes/metrics")),
)
_EDIT_RULES = (*_VIEW_RULES, Rule(WRITE, ("pods", "deployments")), Rule(("create",), ("pods/exec",)))
_ADMIN_RULES = (*_EDIT_RULES, Rule((*READ, *WRITE), _namespaced_kinds()))

ROLES: dict[str, Role] = {r.name: r for r in (
    Role("view", _VIEW_RULES, "read pods, deployments, events, revisions, pod logs and usage "
                              "(and, cluster-wide, nodes, namespaces and priority classes)"),
    Role("edit", _EDIT_RULES, "view, plus create, update, patch and delete pods and deployments, and exec"),
    Role("admin", _ADMIN_RULES, "edit, plus every verb on every namespaced kind (events, leases, revisions)"),
    Role("cluster-admin", (Rule((ANY,), (ANY,)),),
         "everything, cluster-scoped kinds included: nodes, priority classes, image import"),
)}

#: Groups that are cluster admin whatever the bindings say.
ADMIN_GROUPS = (pki.MASTERS_GROUP, pki.SCHEDULERS_GROUP)


@dataclass(frozen=True, slots=True)
class Binding:
    """``role`` for ``users`` and ``groups``, in ``namespaces`` (None: cluster-wide)."""

    name: str
    role: Role
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    namespaces: frozenset[str] | None = None

    def covers(self, attrs: Attributes) -> bool:
        if self.namespaces is None:
            return True
        return attrs.namespaced and attrs.namespace is not None and attrs.namespace in self.namespaces

    def __str__(self) -> str:
        where = ("cluster-wide" if self.namespaces is None else
                 "in namespace" + ("s " if len(self.namespaces) > 1 else " ") + ", ".join(sorted(self.namespaces)))
        return f"binding {_q(self.name)} (role {self.role.name} {where})"


_CONFIG_FIELDS = ("bindings",)
_BINDING_FIELDS = ("name", "role", "users", "groups", "namespaces", "clusterWide")


def _names(value: Any, path: str, errors: list[FieldError]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(FieldError(path, f"must be a list of names, got {describe_value(value)}"))
        return []
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            errors.append(FieldError(f"{path}[{i}]", f"must be a non-empty string, got {describe_value(item)}"))
        else:
            out.append(item)
    return out


def _binding(raw: Any, i: int, errors: list[FieldError]) -> Binding | None:
    path = f"bindings[{i}]"
    if not isinstance(raw, dict):
        errors.append(FieldError(path, f"must be a mapping, got {describe_value(raw)}"))
        return None
    before = len(errors)
    for key in raw:
        if key not in _BINDING_FIELDS:
            errors.append(FieldError(f"{path}.{key}", "unknown field; the fields are " + ", ".join(_BINDING_FIELDS)
                                     + did_you_mean(key, _BINDING_FIELDS)))
    name = raw.get("name", path)
    if not isinstance(name, str) or not name:
        errors.append(FieldError(f"{path}.name", f"must be a non-empty string, got {describe_value(name)}"))
    got = raw.get("role")
    role = ROLES.get(got) if isinstance(got, str) else None
    if role is None:
        what = "is required" if got is None else f"unknown role {describe_value(got)}"
        errors.append(FieldError(f"{path}.role", f"{what}; the roles are {', '.join(ROLES)}"
                                 + did_you_mean(got, tuple(ROLES))))
    users = _names(raw.get("users"), f"{path}.users", errors)
    groups = _names(raw.get("groups"), f"{path}.groups", errors)
    if not users and not groups and "users" not in raw and "groups" not in raw:
        errors.append(FieldError(path, "binds nobody: give users, groups or both"))
    for j, user in enumerate(users):
        if user.startswith(pki.NODE_USER_PREFIX):
            errors.append(FieldError(f"{path}.users[{j}]", "nodes have no Cluster API access; no binding gives it"))
    for j, group in enumerate(groups):
        if group == pki.NODES_GROUP:
            errors.append(FieldError(f"{path}.groups[{j}]", "nodes have no Cluster API access; no binding gives it"))
    cluster_wide = raw.get("clusterWide", False)
    if not isinstance(cluster_wide, bool):
        errors.append(FieldError(f"{path}.clusterWide", f"must be true or false, got {describe_value(cluster_wide)}"))
    namespaces: frozenset[str] | None = None
    if cluster_wide is True:
        if "namespaces" in raw:
            errors.append(FieldError(path, "give namespaces or clusterWide: true, not both"))
    elif "namespaces" not in raw:
        errors.append(FieldError(path, "give the namespaces it applies in, or clusterWide: true"))
    else:
        listed = _names(raw["namespaces"], f"{path}.namespaces", errors)
        for j, ns in enumerate(listed):
            problem = validate_dns1123_label(ns)
            if problem:
                errors.append(FieldError(f"{path}.namespaces[{j}]", problem))
        if not listed and isinstance(raw["namespaces"], list):
            errors.append(FieldError(f"{path}.namespaces", "is empty: give at least one, or clusterWide: true"))
        namespaces = frozenset(listed)
    if len(errors) > before or role is None:
        return None
    return Binding(str(name), role, frozenset(users), frozenset(groups), namespaces)


def parse_authorization_config(doc: Any, source: str = "authorization config") -> list[Binding]:
    """The bindings of an ``--authorization-config`` document (docs/rbac.md); a ConfigError
    names every problem. An empty document binds nobody."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ConfigError(FieldError("", f"must be a mapping with bindings, got {describe_value(doc)}"),
                          context=source)
    errors: list[FieldError] = []
    for key in doc:
        if key not in _CONFIG_FIELDS:
            errors.append(FieldError(str(key), "unknown field; the file has one: bindings"
                                     + did_you_mean(key, _CONFIG_FIELDS)))
    raws = doc.get("bindings") or []
    if not isinstance(raws, list):
        errors.append(FieldError("bindings", f"must be a list, got {describe_value(raws)}"))
        raws = []
    bindings: list[Binding] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raws):
        binding = _binding(raw, i, errors)
        if binding is None:
            continue
        if binding.name in seen:
            errors.append(FieldError(f"bindings[{i}].name",
                                     f"{_q(binding.name)} is also the name of bindings[{seen[binding.name]}]"))
        seen.setdefault(binding.name, i)
        bindings.append(binding)
    if errors:
        raise ConfigError(errors, context=source)
    return bindings


def load_authorization_config(path: str | Path) -> list[Binding]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(FieldError("", f"cannot read it: {getattr(e, 'strerror', None) or e}"),
                          context=str(path)) from e
    except yaml.YAMLError as e:
        raise ConfigError(FieldError("", f"not valid YAML: {e}"), context=str(path)) from e
    return parse_authorization_config(doc, str(path))


# --- authorisation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # the binding that allowed it, or why nothing did


class Authorizer:
    """Decides whether a user may do what ``Attributes`` describe: default deny."""

    def __init__(self, bindings: Sequence[Binding] = ()) -> None:
        self.bindings = tuple(bindings)
        self._by_user: dict[str, list[Binding]] = {}
        self._by_group: dict[str, list[Binding]] = {}
        for b in self.bindings:
            for u in b.users:
                self._by_user.setdefault(u, []).append(b)
            for g in b.groups:
                self._by_group.setdefault(g, []).append(b)

    def decide(self, user: User, attrs: Attributes) -> Decision:
        if user.is_node:
            return self.refusal(user, attrs)
        for group in ADMIN_GROUPS:
            if group in user.groups:
                return Decision(True, f"group {group} is cluster-admin")
        for binding in self._candidates(user):
            if binding.covers(attrs) and binding.role.allows(attrs.verb, attrs.resource):
                return Decision(True, f"allowed by {binding}")
        return self.refusal(user, attrs)

    @staticmethod
    def refusal(user: User, attrs: Attributes) -> Decision:
        if user.is_node:
            return Decision(False, f"{user} cannot {attrs}: nodes have no access to the Cluster API")
        return Decision(False, f"{user} cannot {attrs}")

    def _candidates(self, user: User) -> Iterable[Binding]:
        yield from self._by_user.get(user.name, ())
        for group in user.all_groups:
            yield from self._by_group.get(group, ())


# --- one call ------------------------------------------------------------------------------------

#: Methods that change something (or run something): always audited.
MUTATING_METHODS = frozenset({"Apply", "Delete", "PatchNode", "PodExec", "ImportImage"})


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _source(peer: str | None) -> str:
    """``127.0.0.1:5000`` from gRPC's ``ipv4:127.0.0.1:5000`` (``ipv6:[::1]:5000``: ``[::1]:5000``)."""
    if not peer:
        return ""
    scheme, _, rest = peer.partition(":")
    return rest if scheme in ("ipv4", "ipv6") else peer


@dataclass
class AccessControl:
    """What ClusterService needs: who calls, what they may do, and where that is recorded.

    The default (``AccessControl()``) authenticates certificates, accepts no token,
    binds nobody, audits nothing: on a TLS port only system:masters and
    system:schedulers get anything; on a plaintext port the anonymous caller is admin.
    """

    authenticator: Authenticator = field(default_factory=Authenticator)
    authorizer: Authorizer = field(default_factory=Authorizer)
    audit: AuditLog | None = None
    audit_reads: bool = False

    def call(self, context: grpc.aio.ServicerContext, method: str, *, long_running: bool = False) -> Call:
        """The access checks of one request (``async with``): see ``Call``."""
        return Call(self, context, method, long_running)

    def close(self) -> None:
        """Write out and close the audit log."""
        if self.audit is not None:
            self.audit.close()


#: The Call of the request being served (each gRPC handler runs in a task of its own):
#: lets ``ending`` record a call's status before ``context.abort`` sends it.
_CURRENT: ContextVar[Call | None] = ContextVar("orch_auth_call", default=None)


def ending(code: grpc.StatusCode) -> None:
    """The request being served is about to end with ``code``: write its record now.

    ``context.abort`` sends the status before it raises, so a record written on the way
    out of the handler could reach the file after the client has its answer (and after
    the record of its next call). ``scheduler.api.abort`` calls this first.
    """
    call = _CURRENT.get()
    if call is not None and not call._recorded:
        call._record(code)


class Call:
    """Authentication, authorisation and the audit record of one request.

    ``async with access.call(context, "Delete") as call:`` authenticates on entry (an
    unauthenticated caller is recorded and the call aborted UNAUTHENTICATED);
    ``call.authorize(attrs)`` raises Forbidden (an OrchError, which ``api.guarded``
    turns into PERMISSION_DENIED) unless every permission is granted; on exit the
    record is written with the call's status code — or, for a long-running stream,
    as soon as it is allowed (stage ``ResponseStarted``).
    """

    def __init__(self, access: AccessControl, context: grpc.aio.ServicerContext, method: str,
                 long_running: bool) -> None:
        self.access = access
        self.context = context
        self.method = method
        self.long_running = long_running
        self.user: User | None = None
        self.targets: list[Attributes] = []
        self.decision: str | None = None
        self.reason = ""
        self.dry_run = False
        self.name_override: str | None = None
        self._recorded = False
        self._error: str | None = None

    async def __aenter__(self) -> Call:
        _CURRENT.set(self)
        try:
            self.user = self.access.authenticator.authenticate(self.context)
        except Unauthenticated as e:
            self.decision, self.reason = "deny", str(e)
            self._record(grpc.StatusCode.UNAUTHENTICATED)
            await self.context.abort(e.code, str(e))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if _CURRENT.get() is self:
            _CURRENT.set(None)
        if self._recorded:
            return
        if exc is None:
            code: grpc.StatusCode | None = grpc.StatusCode.OK
        elif isinstance(exc, grpc.aio.AbortError):
            code = self.context.code()
        elif isinstance(exc, OrchError):
            code = exc.code
        elif isinstance(exc, Exception):
            code = grpc.StatusCode.INTERNAL
        else:  # CancelledError, GeneratorExit: the client went away
            code = grpc.StatusCode.CANCELLED
        self._record(code)

    # --- authorisation

    def check(self, attrs: Attributes) -> Decision:
        assert self.user is not None, "check() before authentication"
        return self.access.authorizer.decide(self.user, attrs)

    def refusal(self, attrs: Attributes) -> Decision:
        """The refusal of ``attrs`` (whose parts ``check`` refused), in the same words."""
        assert self.user is not None, "refusal() before authentication"
        return self.access.authorizer.refusal(self.user, attrs)

    def authorize(self, *attrs: Attributes, dry_run: bool = False) -> None:
        """Every permission ``attrs`` name, or Forbidden naming each one missing."""
        self.grant([(a, self.check(a)) for a in attrs], dry_run=dry_run)

    def grant(self, decided: Sequence[tuple[Attributes, Decision]], *, dry_run: bool = False) -> None:
        """Take decisions made with ``check``: Forbidden if any is a refusal."""
        self.targets = [a for a, _ in decided]
        self.dry_run = dry_run
        if not decided:
            return  # nothing to decide (an Apply whose every document is invalid): the decision stays null
        refused = [(a, d) for a, d in decided if not d.allowed]
        if refused:
            self.decision = "deny"
            first_attrs, first = refused[0]
            more = [] if self.user is not None and self.user.is_node else _unique_texts(
                str(a) for a, _ in refused[1:] if str(a) != str(first_attrs))
            self.reason = first.reason + "".join(f", nor {text}" for text in more)
            raise Forbidden(self.reason)
        self.decision = "allow"
        self.reason = "; ".join(_unique_texts(d.reason for _, d in decided))
        if self.long_running:
            self._record(None)

    def set_targets(self, attrs: Sequence[Attributes]) -> None:
        """The targets as they turned out (Apply: create or update, once the registry said)."""
        self.targets = list(attrs)

    # --- the record

    def _wanted(self) -> bool:
        return (self.access.audit is not None
                and (self.decision == "deny" or self.method in MUTATING_METHODS or self.access.audit_reads))

    def _record(self, code: grpc.StatusCode | None) -> None:
        self._recorded = True
        audit = self.access.audit
        if audit is None or not self._wanted():
            return
        user = self.user
        one = self.targets[0] if len(self.targets) == 1 else None

        def shared(key: str) -> Any:
            values = {t.record()[key] for t in self.targets}
            return values.pop() if len(values) == 1 else None

        record: dict[str, Any] = {
            "timestamp": _timestamp(),
            "auditID": uuid.uuid4().hex,
            "stage": "ResponseStarted" if code is None else "ResponseComplete",
            "method": self.method,
            "user": user.name if user else None,
            "groups": list(user.all_groups) if user else [],
            "uid": (user.uid or None) if user else None,
            "authenticatedBy": user.via if user else None,
            "sourceAddress": _source(self.context.peer()),
            "verb": shared("verb"),
            "resource": shared("resource"),
            "namespace": shared("namespace"),
            "name": self.name_override if self.name_override is not None else (one.name or None) if one else None,
            "decision": self.decision,
            "reason": self.reason,
            "code": code.name if code is not None else None,
        }
        if user is not None and user.certificate:
            record["certificate"] = user.certificate
        if self.dry_run:
            record["dryRun"] = True
        if len(self.targets) > 1:
            record["objects"] = [t.record() for t in self.targets]
        try:
            audit.write(record)
        except (TypeError, ValueError):  # noqa: PERF203 - a bug in a record must not fail the call
            log.exception("audit record for %s not written", self.method)


def _unique_texts(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


# --- command line ----------------------------------------------------------------------------------


def _token_file_argument(path: str) -> dict[str, User]:
    try:
        return load_token_file(path)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _authorization_config_argument(path: str) -> list[Binding]:
    try:
        return load_authorization_config(path)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of megabytes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no rotation) or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scheduler's flags for users, roles and the audit log (docs/rbac.md)."""
    group = parser.add_argument_group("users, roles and audit (docs/rbac.md)")
    group.add_argument("--token-auth-file", type=_token_file_argument, metavar="FILE",
                       help='bearer tokens, kube-apiserver\'s CSV: token,user,uid,"group1,group2" per line; a caller '
                            "who sends one is its user (whatever client certificate got it through the handshake)")
    group.add_argument("--authorization-config", type=_authorization_config_argument, metavar="FILE",
                       help="YAML bindings of users and groups to the roles view, edit, admin and cluster-admin, in "
                            "namespaces or cluster-wide (without it only system:masters and system:schedulers get "
                            "anything)")
    group.add_argument("--audit-log-path", metavar="FILE",
                       help="append a JSON line per mutating or refused Cluster API call here ('-': standard output)")
    group.add_argument("--audit-log-reads", action="store_true",
                       help="audit allowed reads too (Get, List, Top, PodLogs; a Watch once, when it opens)")
    group.add_argument("--audit-log-maxsize", type=_megabytes, default=0, metavar="MB",
                       help="rotate the audit log when it reaches this size (default 0: never)")
    group.add_argument("--audit-log-maxbackup", type=int, default=DEFAULT_MAX_BACKUPS, metavar="N",
                       help=f"rotated audit logs to keep (default {DEFAULT_MAX_BACKUPS})")


def from_args(args: argparse.Namespace) -> AccessControl:
    """The AccessControl for ClusterService from ``add_arguments``' flags; the audit log is
    opened here, so an unwritable path stops the start (SystemExit naming it)."""
    audit: AuditLog | None = None
    if args.audit_log_path:
        try:
            audit = AuditLog(args.audit_log_path, max_bytes=args.audit_log_maxsize << 20,
                             max_backups=args.audit_log_maxbackup)
        except OSError as e:
            raise SystemExit(f"cannot open --audit-log-path {args.audit_log_path}: {e.strerror or e}") from e
    access = AccessControl(Authenticator(args.token_auth_file), Authorizer(args.authorization_config or ()),
                           audit, args.audit_log_reads)
    log.info("Cluster API access: %d binding(s), %s, %s", len(access.authorizer.bindings),
             f"{len(args.token_auth_file)} token(s)" if args.token_auth_file is not None else "no tokens",
             f"audit log {args.audit_log_path}" if audit is not None else "no audit log")
    return access


__all__ = [
    "ADMIN_GROUPS", "APPLY", "ROLES", "AccessControl", "Attributes", "Authenticator", "Authorizer", "Binding", "Call",
    "ConfigError", "Decision", "Forbidden", "ending", "Role", "Rule", "Unauthenticated", "User", "add_arguments",
    "from_args", "load_authorization_config", "load_token_file", "parse_authorization_config", "parse_token_file",
]
