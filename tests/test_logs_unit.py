"""Container logs without a cluster: the CRI format, orch-monitor (monitor.c) on real pipes,
rotation, and the reader (tail, since, timestamps, follow across rotations); plus the pure
choices of the logs and exec path (which container instance, which endpoint, the CLI's parsing)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import logs, monitor
from agent.runtime.logs import (
    MAX_LINE,
    LogPolicy,
    log_files,
    parse_entry,
    parse_timestamp,
    read_logs,
)

CRI_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [FP] ")

# What the shim does in miniature: the container's pipes, its process, then exec the
# monitor in this process's place so that it is the container's parent.
_AS_THE_SHIM = """
import os, sys
from agent.runtime.logs import StdioPipes
script, monitor, start_error, *options = sys.argv[1:]
pipes = StdioPipes.open()
err_r, err_w = os.pipe()  # closed by the exec, as the container's; or fd 9 of a failing "start"
pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script], dict(os.environ), file_actions=[
    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
    (os.POSIX_SPAWN_DUP2, pipes.stdout_w, 1),
    (os.POSIX_SPAWN_DUP2, pipes.stderr_w, 2),
] + ([(os.POSIX_SPAWN_DUP2, err_w, 9)] if start_error == "1" else []))
pipes.close_child_ends()
os.close(err_w)
for fd in (pipes.stdout_r, pipes.stderr_r, err_r):
    os.set_inheritable(fd, True)
os.execv(monitor, [monitor, "--pid", str(pid), "--stdout", str(pipes.stdout_r), "--stderr", str(pipes.stderr_r),
                   "--error-fd", str(err_r), *options])
"""


def run_monitor(tmp_path: Path, script: str, policy: LogPolicy | None = None, *options: str,
                start_error: bool = False) -> tuple[dict[str, Any], str]:
    """Run ``sh -c script`` under orch-monitor; returns its exit record and the monitor's stderr.

    With ``start_error`` the script gets the error pipe as fd 9, as a container
    child that fails before its exec has it.
    """
    policy = policy or LogPolicy()
    done = subprocess.run(
        [sys.executable, "-c", _AS_THE_SHIM, script, str(monitor.ensure_built()), "1" if start_error else "0",
         "--log", str(tmp_path / "container.log"), "--exit-file", str(tmp_path / "exit.json"),
         "--started-file", str(tmp_path / "started.json"),
         "--log-max-size", str(policy.max_size), "--log-max-files", str(policy.max_files), *options],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "exit.json").read_text())
    assert set(record) == {"exitCode", "signal", "finishedAt", "reason", "message"}
    return record, done.stderr


def entries(path: Path) -> list[logs.Entry]:
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        assert CRI_LINE.match(line), line[:80]
        e = parse_entry(line)
        assert e is not None
        out.append(e)
    return out


def texts(lines: Iterator[logs.LogLine]) -> bytes:
    return b"".join(line.text for line in lines)


# --- the format ------------------------------------------------------------------------


def format_timestamp(ns: int) -> str:
    """What orch-monitor writes: RFC3339, nine fractional digits, UTC (fixed width, so text order is time order)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def format_entry(timestamp: str, stream: str, tag: str, content: bytes) -> bytes:
    """One CRI log line as orch-monitor writes it, for the reader's tests."""
    return b"%s %s %s %s\n" % (timestamp.encode(), stream.encode(), tag.encode(), content)


def test_timestamps_are_fixed_width_rfc3339_nano_and_parse_back() -> None:
    ns = 1_795_808_892_123_456_789
    ts = format_timestamp(ns)
    assert ts == "2026-11-27T19:48:12.123456789Z"
    assert parse_timestamp(ts) == ns
    assert format_timestamp(1_795_808_892_000_000_000).endswith(".000000000Z")
    assert parse_timestamp("2026-11-27T21:48:12.5+02:00") == 1_795_808_892_500_000_000
    assert parse_timestamp("2026-11-27T19:48:12Z") == 1_795_808_892_000_000_000
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_entries_round_trip_and_malformed_lines_are_refused() -> None:
    line = format_entry("2026-11-27T19:48:12.123456789Z", "stdout", "F", b"hello world")
    assert line == b"2026-11-27T19:48:12.123456789Z stdout F hello world\n"
    assert parse_entry(line) == ("2026-11-27T19:48:12.123456789Z", "stdout", "F", b"hello world")
    for empty in (b"2026-11-27T19:48:12.123456789Z stderr P \n", b"2026-11-27T19:48:12.123456789Z stderr P"):
        e = parse_entry(empty)
        assert e is not None and e.content == b""
    for bad in (b"", b"hello", b"2026-11-27T19:48:12Z stdin F x", b"nope stdout F x",
                b"2026-11-27T19:48:12Z stdout X x"):
        assert parse_entry(bad) is None, bad


def test_policy_comes_from_the_environment_with_safe_fallbacks() -> None:
    assert LogPolicy.from_env({}) == LogPolicy(10 * 1024 * 1024, 5)
    assert LogPolicy.from_env(LogPolicy(4096, 3).to_env()) == LogPolicy(4096, 3)
    assert LogPolicy.from_env({logs.ENV_MAX_SIZE: "lots", logs.ENV_MAX_FILES: "1"}) == LogPolicy()
    with pytest.raises(ValueError, match="at least 2"):
        LogPolicy(1024, 1)
    with pytest.raises(ValueError, match="at least 1 byte"):
        LogPolicy(0, 5)


# --- orch-monitor: real pipes ---------------------------------------------------------


def test_monitor_writes_both_streams_partial_lines_and_passes_on_the_exit_status(tmp_path: Path) -> None:
    record, _ = run_monitor(tmp_path, f"""
        echo hello; echo oops >&2; echo; printf 'no newline yet'; sleep 0.2; echo ' - done'
        head -c {MAX_LINE + 5} /dev/zero | tr '\\0' a; echo
        printf 'cut off'; exit 3""")
    assert (record["exitCode"], record["signal"], record["reason"], record["message"]) == (3, None, "Error", None)
    assert abs(parse_timestamp(record["finishedAt"]) - time.time_ns()) < 60 * 10**9
    started = json.loads((tmp_path / "started.json").read_text())
    assert set(started) == {"pid", "startedAt", "startTime"} and started["pid"] > 1 and started["startTime"] > 0
    assert parse_timestamp(started["startedAt"]) <= parse_timestamp(record["finishedAt"])
    got = entries(tmp_path / "container.log")
    out = [(e.tag, e.content) for e in got if e.stream == "stdout"]
    assert out == [("F", b"hello"), ("F", b""), ("F", b"no newline yet - done"), ("P", b"a" * MAX_LINE),
                   ("F", b"aaaaa"), ("P", b"cut off")]
    assert [(e.tag, e.content) for e in got if e.stream == "stderr"] == [("F", b"oops")]
    stamps = [e.timestamp for e in got]
    assert stamps == sorted(stamps)
    assert abs(parse_timestamp(stamps[-1]) - time.time_ns()) < 60 * 10**9  # UTC, the time it was read
    # Read back, the pieces make each stream's output again. (Between the two
    # streams, order is only as fine as the shim's reads, as with any CRI runtime.)
    back = list(read_logs(tmp_path))
    assert b"".join(x.text for x in back if x.stream == "stdout") == (
        b"hello\n\nno newline yet - done\n" + b"a" * (MAX_LINE + 5) + b"\ncut off")
    assert b"".join(x.text for x in back if x.stream == "stderr") == b"oops\n"


def test_a_quiet_stream_never_holds_up_a_busy_one(tmp_path: Path) -> None:
    # 8 MiB on stderr while stdout stays open and silent: a reader blocked on
    # stdout would leave the writer stuck on a full stderr pipe.
    started = time.monotonic()
    record, _ = run_monitor(tmp_path, "head -c 8388608 /dev/zero | tr '\\0' a | fold -w 1023 >&2",
                            LogPolicy(64 * 1024 * 1024, 2))
    assert (record["exitCode"], record["reason"]) == (0, "Completed") and time.monotonic() - started < 20
    got = [e for e in entries(tmp_path / "container.log")]
    assert {e.stream for e in got} == {"stderr"}
    assert sum(len(e.content) for e in got) == 8388608 and len(got) == 8201


def test_rotation_keeps_whole_lines_and_at_most_max_files(tmp_path: Path) -> None:
    policy = LogPolicy(max_size=1000, max_files=3)
    run_monitor(tmp_path, "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; done", policy)
    files = log_files(tmp_path)
    assert [p.name for p in files] == ["container.log.2", "container.log.1", "container.log"]
    kept = []
    for p in files:
        assert p.stat().st_size <= 1000
        kept += [e.content for e in entries(p)]
    # The newest lines, in order and without a gap; the oldest files were dropped.
    last = int(kept[-1].split()[1])
    assert last == 300
    assert kept == [b"line %d" % i for i in range(last - len(kept) + 1, last + 1)]
    assert len(kept) < 300


def test_a_log_that_cannot_be_written_drops_output_but_the_exit_is_still_recorded(tmp_path: Path) -> None:
    # A symlink to /dev/full: every write fails with ENOSPC (rotation would only move the link).
    (tmp_path / "container.log").symlink_to("/dev/full")
    record, err = run_monitor(tmp_path, "echo hello; echo hello; echo hello; exit 7",
                              LogPolicy(max_size=1 << 30, max_files=2))
    assert record["exitCode"] == 7
    assert "No space left on device" in err and "138 bytes of output were dropped" in err


def test_a_signal_is_recorded_as_kubernetes_reports_it(tmp_path: Path) -> None:
    record, _ = run_monitor(tmp_path, "echo bye; kill -TERM $$")
    assert (record["exitCode"], record["signal"], record["reason"]) == (143, 15, "Error")
    assert [e.content for e in entries(tmp_path / "container.log")] == [b"bye"]


@pytest.mark.parametrize(("events", "failcnt", "script", "reason"), [
    ("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", None, "kill -KILL $$", "OOMKilled"),  # v1, Linux >= 4.13
    ("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n", None, "kill -KILL $$", "Error"),  # v2: no kill counted
    ("oom_kill_disable 0\nunder_oom 0\n", "3", "kill -KILL $$", "OOMKilled"),  # v1, old kernel: failcnt
    ("oom_kill_disable 0\nunder_oom 0\n", "3", "exit 1", "Error"),  # ... but only with a SIGKILL
    ("oom_kill 2\n", None, "exit 0", "Completed"),  # a clean exit is never an OOM kill
])
def test_the_oom_verdict_follows_the_cgroup_counters(tmp_path: Path, events: str, failcnt: str | None,
                                                     script: str, reason: str) -> None:
    from agent.runtime.cgroups import V1Driver

    (tmp_path / "events").write_text(events)
    options = ["--oom-events", str(tmp_path / "events")]
    if failcnt is not None:
        (tmp_path / "failcnt").write_text(failcnt)
        options += ["--oom-failcnt", str(tmp_path / "failcnt")]
    record, _ = run_monitor(tmp_path, script, None, *options)
    assert record["reason"] == reason
    # The same rule as the Python drivers' (on a fake v1 layout with the same files).
    memory = tmp_path / "memory" / "c"
    memory.mkdir(parents=True)
    (memory / "memory.oom_control").write_text(events)
    if failcnt is not None:
        (memory / "memory.failcnt").write_text(failcnt)
    driver = V1Driver({"memory": str(tmp_path / "memory"), "cpu": str(tmp_path / "cpu")})
    if reason != "Completed":
        assert driver.oom_killed("c", sigkilled="KILL" in script) == (reason == "OOMKilled")


def test_leftovers_in_the_cgroup_are_killed_after_the_exit_is_recorded(tmp_path: Path) -> None:
    # A fake cgroup listing a process of ours that is not the container's.
    # (cgroupfs drops a reaped pid from cgroup.procs by itself; here a thread reaps it
    # and the monitor's next kill finds it gone.)
    straggler = subprocess.Popen(["sleep", "60"])
    reaper = threading.Thread(target=straggler.wait, daemon=True)
    reaper.start()
    try:
        (tmp_path / "cg" / "child").mkdir(parents=True)
        (tmp_path / "cg" / "cgroup.procs").write_text("")
        (tmp_path / "cg" / "child" / "cgroup.procs").write_text(f"{straggler.pid}\n")
        record, err = run_monitor(tmp_path, "exit 0", None, "--cgroup", str(tmp_path / "cg"))
        assert record["reason"] == "Completed" and "still listed" not in err
        reaper.join(10)
        assert straggler.returncode == -signal.SIGKILL
    finally:
        straggler.kill()
        straggler.wait()


def test_a_start_error_is_recorded_with_the_childs_message_and_code(tmp_path: Path) -> None:
    # What the child writes when something before its exec fails, here with
    # characters JSON must escape and UTF-8 that must survive.
    record, err = run_monitor(tmp_path, r"""printf 'exec "/bin/café": No such file\\or\tdirectory\n' >&9; exit 3""",
                              start_error=True)
    assert (record["exitCode"], record["signal"], record["reason"]) == (3, None, "StartError")
    assert record["message"] == 'exec "/bin/café": No such file\\or\tdirectory'
    assert not (tmp_path / "started.json").exists() and "start failed" in err
    # A child that fails and exits 0 (or dies of a signal) is still a start error, code 127.
    record, _ = run_monitor(tmp_path, "printf 'mount: nope' >&9; kill -KILL $$", start_error=True)
    assert (record["exitCode"], record["reason"], record["message"]) == (127, "StartError", "mount: nope")


def test_a_bad_command_line_is_refused(tmp_path: Path) -> None:
    bad = subprocess.run([str(monitor.ensure_built()), "--pid", "1", "--stdout", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--stdout: x is not a number" in bad.stderr
    bad = subprocess.run([str(monitor.ensure_built()), "--pid", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: orch-monitor" in bad.stderr


# --- the reader ---------------------------------------------------------------------------


def write_rotated(d: Path, lines_per_file: list[list[str]]) -> None:
    """Files oldest first: container.log.N ... .1, container.log, each with these stdout lines."""
    n = len(lines_per_file) - 1
    t = 1_795_808_892_000_000_000
    for i, lines in enumerate(lines_per_file):
        name = "container.log" if i == n else f"container.log.{n - i}"
        data = b""
        for text in lines:
            t += 1_000_000
            data += format_entry(format_timestamp(t), "stdout", "F", text.encode())
        (d / name).write_bytes(data)


def test_tail_reaches_back_across_rotated_files(tmp_path: Path) -> None:
    write_rotated(tmp_path, [["a1", "a2"], ["b1", "b2", "b3"], ["c1"]])
    assert texts(read_logs(tmp_path)) == b"a1\na2\nb1\nb2\nb3\nc1\n"
    assert texts(read_logs(tmp_path, tail=1)) == b"c1\n"
    assert texts(read_logs(tmp_path, tail=3)) == b"b2\nb3\nc1\n"
    assert texts(read_logs(tmp_path, tail=5)) == b"a2\nb1\nb2\nb3\nc1\n"
    assert texts(read_logs(tmp_path, tail=50)) == b"a1\na2\nb1\nb2\nb3\nc1\n"
    assert texts(read_logs(tmp_path, tail=0)) == b""
    assert list(read_logs(tmp_path / "missing")) == []


def test_timestamps_prefix_each_line_once_and_since_filters_by_age(tmp_path: Path) -> None:
    old = format_timestamp(time.time_ns() - 3600 * 10**9)
    new = format_timestamp(time.time_ns())
    (tmp_path / "container.log").write_bytes(
        format_entry(old, "stdout", "F", b"an hour ago")
        + format_entry(new, "stdout", "P", b"long ") + format_entry(new, "stderr", "F", b"between")
        + format_entry(new, "stdout", "F", b"line"))
    stamped = list(read_logs(tmp_path, timestamps=True))
    assert [line.text for line in stamped] == [f"{old} an hour ago\n".encode(), f"{new} long ".encode(),
                                               f"{new} between\n".encode(), b"line\n"]
    assert stamped[0].stream == "stdout" and stamped[2].stream == "stderr" and stamped[1].timestamp == new
    assert texts(read_logs(tmp_path, since_seconds=60)) == b"long between\nline\n"


def test_a_half_written_last_line_waits_for_its_end(tmp_path: Path) -> None:
    whole = format_entry(format_timestamp(time.time_ns()), "stdout", "F", b"complete")
    (tmp_path / "container.log").write_bytes(whole + whole[:20])
    assert texts(read_logs(tmp_path)) == b"complete\n"
    assert texts(read_logs(tmp_path, tail=1)) == b"complete\n"


def collect(it: Iterator[logs.LogLine], into: list[bytes]) -> threading.Thread:
    def run() -> None:
        for line in it:
            into.append(line.text)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_follow_reads_across_rotations_until_the_container_exits(tmp_path: Path) -> None:
    (tmp_path / "container.log").write_bytes(b"")
    got: list[bytes] = []
    reader = collect(read_logs(tmp_path, follow=True, poll_interval=0.01), got)
    # ~48 bytes a line, 1000 bytes a file: a rotation every 20 lines, slow enough that
    # the reader, polling at 10 ms, never falls max_files behind (about 300 ms).
    record, _ = run_monitor(tmp_path, "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo line $i; "
                                        "[ $((i % 5)) = 0 ] && sleep 0.02; done",
                              LogPolicy(max_size=1000, max_files=5))
    assert record["exitCode"] == 0
    reader.join(10)
    assert not reader.is_alive(), "follow did not end after the container exited"
    assert b"".join(got) == b"".join(b"line %d\n" % i for i in range(1, 201))
    assert len(log_files(tmp_path)) == 5


def test_follow_with_tail_starts_in_an_older_file_and_stops_when_asked(tmp_path: Path) -> None:
    write_rotated(tmp_path, [["a1", "a2"], ["b1"]])
    stop = threading.Event()
    got: list[bytes] = []
    reader = collect(read_logs(tmp_path, follow=True, tail=2, stop=stop, poll_interval=0.01), got)
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(tmp_path / "container.log", "ab") as f:
        f.write(format_entry(format_timestamp(time.time_ns()), "stdout", "F", b"b2"))
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [b"a2\n", b"b1\n", b"b2\n"]
    assert reader.is_alive(), "follow ended while the container runs"
    stop.set()
    reader.join(5)
    assert not reader.is_alive()


# --- which container instance, and where its agent is ------------------------------------


def _state(cid: str, name: str, status: str, *, uid: str = "u1", exit_code: int | None = None,
           finished: str | None = None) -> object:
    from agent.runtime.runtime import ContainerConfig, ContainerState, ContainerStatus

    config = ContainerConfig(id=cid, pod_uid=uid, pod_namespace="ns", pod_name="web", name=name, image="host",
                             argv=["sh"], env={}, working_dir="", hostname="web", memory_limit_bytes=None,
                             cpu_limit_millis=None, cpu_request_millis=None, pids_limit=None)
    return ContainerState(config=config, status=ContainerStatus(status), pid=None, started_at="2026-11-27T19:00:00Z",
                          finished_at=finished, exit_code=exit_code, reason=None, message=None,
                          log_path=f"/x/{cid}/container.log", cgroup="x")


def _pod(*names: str, policy: str = "Always", uid: str = "u1") -> dict:
    return {"metadata": {"namespace": "ns", "name": "web", "uid": uid},
            "spec": {"restartPolicy": policy, "containers": [{"name": n} for n in names]}}


def test_select_container_follows_kubelets_current_and_previous() -> None:
    from agent.server import select_container
    from apimachinery.errors import NotFoundError, PreconditionError, ValidationError

    def pick(states: list, pods: dict, **kw: object) -> str:
        args = {"namespace": "ns", "pod": "web", "container": "", **kw}
        return select_container(states, pods, **args).config.id  # type: ignore[arg-type]

    first = _state("c1", "main", "exited", exit_code=1, finished="2026-11-27T19:00:01Z")
    second = _state("c2", "main", "running")
    pods = {"u1": _pod("main")}
    assert pick([first, second], pods) == "c2"
    assert pick([first, second], pods, previous=True) == "c1"
    # Waiting to restart (CrashLoopBackOff): its last exit is both current and previous.
    assert pick([first], pods) == "c1" and pick([first], pods, previous=True) == "c1"
    with pytest.raises(PreconditionError, match='previous terminated container "main" in pod "web" not found'):
        pick([second], pods, previous=True)
    # restartPolicy Never: an exited container is simply the current one.
    with pytest.raises(PreconditionError):
        pick([first], {"u1": _pod("main", policy="Never")}, previous=True)
    with pytest.raises(PreconditionError, match="waiting to start"):
        pick([], pods)

    two = {"u1": _pod("a", "b")}
    with pytest.raises(ValidationError, match=r"must be specified for pod web, choose one of: \[a b\]"):
        pick([], two)
    with pytest.raises(NotFoundError, match="container c is not valid for pod web"):
        pick([], two, container="c")
    with pytest.raises(NotFoundError, match='pods "web" not found'):
        pick([second], {}, pod_uid="other")
    # A pod re-created under the same name: the uid decides, the live one by default.
    old = _state("old", "main", "running", uid="u0")
    gone = {"u0": {**_pod("main", uid="u0"), "metadata": {"namespace": "ns", "name": "web", "uid": "u0",
                                                          "deletionTimestamp": "2026-11-27T19:00:00Z"}}}
    assert pick([old, second], {**gone, **pods}) == "c2"
    assert pick([old, second], {**gone, **pods}, pod_uid="u0") == "old"
    # Known only from the runtime (an agent just restarted): still found.
    assert pick([second], {}) == "c2"


def test_endpoints_advertised_and_resolved() -> None:
    from agent.server import advertised_endpoint
    from scheduler.proxy import agent_endpoint

    assert advertised_endpoint("127.0.0.1:0", 4321, "10.0.0.5") == "127.0.0.1:4321"
    assert advertised_endpoint("0.0.0.0:10250", 10250, "10.0.0.5") == "10.0.0.5:10250"
    assert advertised_endpoint("[::]:10250", 10250, "fd00::5") == "[fd00::5]:10250"
    node: dict[str, Any] = {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}
    assert agent_endpoint(node) == "10.0.0.5:10250"
    node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Address"] = "127.0.0.1"
    assert agent_endpoint(node) == "127.0.0.1:10250"
    assert agent_endpoint({"status": {}}) is None


def test_node_records_the_agent_endpoint_from_registration() -> None:
    from apimachinery.pb import node_pb2
    from scheduler.nodes import node_from_registration

    node = node_from_registration(node_pb2.RegisterRequest(node_name="n1", agent_endpoint="127.0.0.1:4321"), None)
    assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 4321, "Address": "127.0.0.1"}}
    assert "daemonEndpoints" not in node_from_registration(node_pb2.RegisterRequest(node_name="n1"), None)["status"]


def test_cli_parses_exec_commands_after_double_dash_and_chooses_containers() -> None:
    from cli.main import CliError, _duration, _parse, build_parser, choose_container

    args = _parse(build_parser(), ["-n", "x", "exec", "-i", "web", "-c", "main", "--", "sh", "-c", "echo $$", "--"])
    assert (args.namespace, args.pod, args.container, args.stdin) == ("x", "web", "main", True)
    assert args.exec_argv == ["sh", "-c", "echo $$", "--"]
    assert _parse(build_parser(), ["get", "pods", "--", "x"]).targets == ["pods", "x"]
    assert _duration("90") == 90 and _duration("1h30m") == 5400 and _duration("1.5s") == 1.5
    pod: dict[str, Any] = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    with pytest.raises(CliError, match=r"a container name must be specified for pod web, choose one of: \[a b\]"):
        choose_container(pod, "")
    assert choose_container(pod, "b") == "b"
    with pytest.raises(CliError, match="container c is not valid for pod web"):
        choose_container(pod, "c")
    pod["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "b"}
    assert choose_container(pod, "") == "b"
