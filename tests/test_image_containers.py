"""Containers from real images: a busybox OCI image built by the test, imported into the
node's store, run by the runtime on an overlay of its layers with a writable layer of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (  # noqa: E402
    container_output,
    host_mounts_mentioning,
    make_config,
    requires_root,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.images import ImageStore  # noqa: E402
from agent.runtime.runtime import ContainerStatus, Runtime  # noqa: E402
from tests import imagebuild as ib  # noqa: E402

pytestmark = pytest.mark.skipif(not ib.BUSYBOX.exists(), reason="needs Debian's busybox-static (/bin/busybox)")


@pytest.fixture
def busybox_layers(tmp_path: Path) -> list[str]:
    store = ImageStore(tmp_path / "images")
    store.import_archive(ib.write_oci_layout(tmp_path / "layout", [(ib.busybox_image(), "busybox:test")]))
    image = store.resolve("busybox:test")
    assert image is not None
    return [str(p) for p in store.layer_dirs(image)]


def exited(runtime: Runtime, cid: str) -> bool:
    return runtime.state(cid).status is ContainerStatus.EXITED


@requires_root
def test_busybox_image_runs_on_its_own_layers(runtime: Runtime, busybox_layers: list[str], tmp_path: Path) -> None:
    script = ("echo pid=$$; cat /etc/hostname; ls /bin/busybox; echo written > /made-here; cat /made-here; "
              "test -e /usr/lib/os-release && echo HOST-USR-VISIBLE; echo done")
    cfg = make_config(["/bin/sh", "-c", script], image="busybox:test", layer_dirs=busybox_layers,
                      pod_name="bb", hostname="bb")
    st = runtime.start(cfg)
    wait_for(lambda: exited(runtime, cfg.id), what="the busybox container to exit")
    out = container_output(st.log_path)
    assert runtime.state(cfg.id).exit_code == 0, out
    assert "pid=1" in out and "\nbb\n" in f"\n{out}" and "/bin/busybox" in out and "written" in out
    assert "HOST-USR-VISIBLE" not in out, "the host's /usr leaked into an image container"
    # Its writes went to its own upper layer, never to the shared image layers.
    upper = Path(runtime.containers_dir / cfg.id / "upper")
    assert (upper / "made-here").read_text() == "written\n"
    assert not any((Path(d) / "made-here").exists() for d in busybox_layers)
    # The overlay and the /etc binds live in the container's mount namespace only (the pod
    # sandbox's namespace handles are the host mounts a running pod has, by design).
    assert [m for m in host_mounts_mentioning(str(tmp_path)) if " - nsfs " not in m] == []


@requires_root
def test_read_only_root_from_an_image(runtime: Runtime, busybox_layers: list[str]) -> None:
    cfg = make_config(["/bin/sh", "-c", "echo x > /x && echo WROTE || echo REFUSED"], image="busybox:test",
                      layer_dirs=busybox_layers, read_only_root_filesystem=True)
    st = runtime.start(cfg)
    wait_for(lambda: exited(runtime, cfg.id), what="the container to exit")
    assert "REFUSED" in container_output(st.log_path)


@requires_root
def test_an_image_without_layers_is_refused(runtime: Runtime) -> None:
    from apimachinery.errors import RuntimeError_

    with pytest.raises((RuntimeError_, ValueError), match="layer"):
        runtime.start(make_config(["/bin/true"], image="busybox:nope"))


@requires_root
def test_an_image_in_a_pod_with_its_own_user_namespace(runtime: Runtime, busybox_layers: list[str]) -> None:
    """hostUsers: false with an image: its files keep their owners inside (idmapped layers),
    the container's root can write its root, and the host sees the pod's own uid range."""
    script = ("echo id=$(id -u):$(id -g) bin=$(stat -c %u:%g /bin/busybox) root=$(stat -c %u:%g /) "
              "etc=$(stat -c %u:%g /etc/hostname); echo mine > /made-here && chown 0:0 /made-here && echo wrote; "
              "echo ready; exec sleep 1000")
    cfg = make_config(["/bin/sh", "-c", script], image="busybox:test", layer_dirs=busybox_layers,
                      pod_uid="userns-img", host_users=False)
    st = runtime.start(cfg)
    wait_for(lambda: "ready" in container_output(st.log_path), what="the container to report")
    out = container_output(st.log_path)
    assert "id=0:0 bin=0:0 root=0:0 etc=0:0" in out and "wrote" in out, out
    sandbox = runtime.sandboxes.get("userns-img")
    assert sandbox is not None and sandbox.idmap is not None
    base = sandbox.idmap.host_id
    # On the host: the process and the file it wrote belong to the pod's range, not to root;
    # the shared image layer is untouched and still owned by host root.
    assert st.pid is not None and os.stat(f"/proc/{st.pid}").st_uid == base
    made = Path(runtime.containers_dir / cfg.id / "upper" / "made-here")
    assert (made.stat().st_uid, made.stat().st_gid) == (base, base)
    assert all(Path(d, "bin", "busybox").stat().st_uid == 0 for d in busybox_layers
               if Path(d, "bin", "busybox").exists())
    runtime.remove(cfg.id)
    runtime.remove_pod("userns-img")
