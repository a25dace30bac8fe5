"""The exceptions of the image store, each carrying the kubelet's waiting reason.

    apimachinery.errors.RuntimeError_
     └── ImageError                 anything wrong with an image, an archive or the store
          ├── InvalidImageNameError  a reference that does not parse      (InvalidImageName)
          ├── ImagePullError         the registry could not be reached or refused (ErrImagePull)
          ├── ImageNeverPullError    absent with imagePullPolicy Never    (ErrImageNeverPull)
          └── ContainerConfigError   the image and the container's spec don't fit together
                                     (CreateContainerConfigError), e.g. runAsNonRoot

``reason`` is what the agent puts in a container's ``state.waiting.reason``,
as the kubelet does; the message is the human half.
"""

from __future__ import annotations

from apimachinery.errors import RuntimeError_

__all__ = ["ContainerConfigError", "ImageError", "ImageNeverPullError", "ImagePullError", "InvalidImageNameError"]


class ImageError(RuntimeError_):
    """An image could not be imported, pulled, verified, unpacked or found.

    The reason defaults to ``ErrImagePull``: at a pod's start every failure to
    get an image (a bad digest, a hostile layer) is a failed pull to the kubelet.
    """

    reason = "ErrImagePull"


class InvalidImageNameError(ImageError):
    """A reference that is not a valid image name (Docker's reference grammar)."""

    reason = "InvalidImageName"


class ImagePullError(ImageError):
    """The registry could not be reached, refused us, or does not have the image."""

    reason = "ErrImagePull"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the registry's HTTP status, if it answered


class ImageNeverPullError(ImageError):
    """The image is not on the node and the pull policy forbids pulling it."""

    reason = "ErrImageNeverPull"


class ContainerConfigError(ImageError):
    """The container's spec and its image's config contradict each other (runAsNonRoot with a root image)."""

    reason = "CreateContainerConfigError"
