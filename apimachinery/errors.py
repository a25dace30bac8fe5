"""The one exception tree of orch, and its one-to-one map onto gRPC status codes.

    OrchError
     ├── ValidationError      INVALID_ARGUMENT   a spec is wrong; names every bad field
     ├── ConflictError        ABORTED            a compare-and-swap lost its race
     ├── NotFoundError        NOT_FOUND
     ├── AlreadyExistsError   ALREADY_EXISTS
     ├── UnavailableError     UNAVAILABLE        etcd or a peer cannot be reached
     ├── ExpiredError         OUT_OF_RANGE       a watch's resourceVersion was compacted: relist
     ├── PreconditionError    FAILED_PRECONDITION  not in a state that allows it (exec into a finished container)
     └── RuntimeError_        INTERNAL           the node could not do what it was asked

A server raises these; ``to_status`` turns one into a gRPC code and message, and a
client turns an ``grpc.RpcError`` back into the same class with ``from_rpc_error``,
so ``orchctl`` can say "conflict" or "not found" without parsing strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class OrchError(Exception):
    """Base of every error orch raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


@dataclass(frozen=True, slots=True)
class FieldError:
    """One thing wrong with one field: ``path`` like ``spec.containers[0].image``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(OrchError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, errors: list[FieldError] | FieldError, *, context: str = "") -> None:
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        self.context = context
        text = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{context}: {text}" if context else text)


class ConflictError(OrchError):
    code = grpc.StatusCode.ABORTED


class NotFoundError(OrchError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(OrchError):
    code = grpc.StatusCode.ALREADY_EXISTS


class UnavailableError(OrchError):
    code = grpc.StatusCode.UNAVAILABLE


class ExpiredError(OrchError):
    """Kubernetes' 410 Gone: the revision asked for is older than etcd keeps."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PreconditionError(OrchError):
    """The object is not in a state that allows this: logs of a pod not on a node yet,
    exec into a container that does not run, a previous instance that never was."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class RuntimeError_(OrchError):  # noqa: N801 - trailing underscore: not the builtin
    code = grpc.StatusCode.INTERNAL


class UnauthenticatedError(OrchError):
    """Kubernetes' 401: the caller could not be identified (an unknown bearer token, no
    client certificate on a TLS connection)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ForbiddenError(OrchError):
    """Kubernetes' 403: the caller is known and not allowed this (RBAC, NodeRestriction);
    the message names the permission that is missing."""

    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: dict[grpc.StatusCode, type[OrchError]] = {
    cls.code: cls
    for cls in (
        ValidationError, ConflictError, NotFoundError, AlreadyExistsError, UnavailableError, ExpiredError,
        PreconditionError, RuntimeError_, UnauthenticatedError, ForbiddenError,
    )
}


def from_rpc_error(err: grpc.RpcError) -> OrchError:
    """The OrchError a server meant when it answered with this status."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, OrchError)
    if cls is ValidationError:
        exc: OrchError = ValidationError(FieldError("", details or "invalid"))
        exc.args = (details,)
        return exc
    if cls is OrchError:
        return OrchError(f"{code.name if code else 'UNKNOWN'}: {details}")
    return cls(details)
