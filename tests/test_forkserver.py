"""The node's shim fork server: one per node, shared by every Runtime on it, replaced when it
dies, gone after cleanup; running containers never depend on it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (  # noqa: E402
    make_config,
    pid_gone,
    requires_root,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.runtime.runtime import ContainerStatus, Runtime  # noqa: E402


@requires_root
def test_one_fork_server_per_node_replaced_when_it_dies_and_gone_after_cleanup(runtime: Runtime) -> None:
    first = runtime.start(make_config(["/bin/sleep", "300"], name="a"))
    # A second Runtime on the same node (a restarted agent) uses the same fork server.
    other = Runtime(runtime.state_dir, runtime.cgroup_root)
    second = other.start(make_config(["/bin/sleep", "300"], name="b"))
    server = runtime._forkserver_pid()
    assert server is not None and other._forkserver_pid() == server

    # Its death touches no container; the next start gets a new one, still exactly one.
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: pid_gone(server), what="the fork server to die")
    assert runtime.state(first.config.id).status is ContainerStatus.RUNNING
    assert runtime.state(second.config.id).status is ContainerStatus.RUNNING
    third = other.start(make_config(["/bin/sleep", "300"], name="c"))
    assert third.status is ContainerStatus.RUNNING
    replacement = runtime._forkserver_pid()
    assert replacement is not None and replacement != server

    runtime.cleanup_all()
    assert runtime._forkserver_pid() is None
    assert pid_gone(replacement)
