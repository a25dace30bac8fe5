"""cgroup limits doing their job on the real kernel: a fork bomb stops at the pids limit and
the node keeps working; a container past its memory limit is OOM-killed and says so."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (  # noqa: E402
    container_output,
    make_config,
    requires_root,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.runtime.runtime import ContainerStatus, Runtime  # noqa: E402

# Fork until the kernel refuses (at most 500, so a broken limit cannot hurt the machine);
# each child sleeps, the parent reports how far it got and why it stopped.
BOMB = """
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        n += 1
    print("never refused", flush=True)
except OSError as e:
    print(f"refused after {n} forks: errno {e.errno}", flush=True)
print("alive=%d" % sum(1 for d in os.listdir("/proc") if d.isdigit()), flush=True)
print("done", flush=True)
time.sleep(300)
"""


@requires_root
def test_a_fork_bomb_stops_at_the_pids_limit_and_the_node_keeps_working(runtime: Runtime) -> None:
    bomb = runtime.start(make_config(["/usr/bin/python3", "-c", BOMB], pids_limit=32, name="bomb"))
    wait_for(lambda: "done" in container_output(bomb.log_path), timeout=60, what="the bomb to hit its limit")
    out = container_output(bomb.log_path)
    assert "refused after" in out and "errno 11" in out, out  # EAGAIN: the pids controller said no
    alive = int(out.split("alive=")[1].split()[0])
    assert alive <= 32, out
    assert len(runtime.driver.pids(bomb.cgroup)) <= 32
    # The node is fine: a new container starts and runs to completion.
    ok = runtime.start(make_config(["/bin/sh", "-c", "echo still-working"], name="after"))
    wait_for(lambda: runtime.state(ok.config.id).status is ContainerStatus.EXITED, what="the next container")
    assert runtime.state(ok.config.id).exit_code == 0
    assert "still-working" in container_output(ok.log_path)


@requires_root
def test_past_its_memory_limit_a_container_is_oom_killed(runtime: Runtime) -> None:
    hog = runtime.start(make_config(["/usr/bin/python3", "-c", "b = bytearray(256 * 1024 * 1024); print(len(b))"],
                                    memory_limit_bytes=48 * 1024 * 1024, name="hog"))
    wait_for(lambda: runtime.state(hog.config.id).status is ContainerStatus.EXITED, timeout=30, what="the OOM kill")
    st = runtime.state(hog.config.id)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
