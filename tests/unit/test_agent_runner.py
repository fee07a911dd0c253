"""The agent's process runner with real subprocesses: output, exit codes, kills, files."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gaffer.agent._runner import (
    InputFile,
    InvalidPathError,
    OutputStream,
    Process,
    RunSpec,
    children_watched_with_pidfds,
    resolve_outputs,
    write_inputs,
)
from tests.helpers import wait_until, wait_until_async

ENV = {"PATH": os.defpath, "LANG": "C.UTF-8"}


class Collector:
    """An output sink that records chunks and checks their offsets are contiguous."""

    def __init__(self) -> None:
        self.chunks: list[tuple[OutputStream, int, bytes]] = []
        self.data = {OutputStream.STDOUT: b"", OutputStream.STDERR: b""}

    async def __call__(self, stream: OutputStream, offset: int, data: bytes) -> None:
        assert offset == len(self.data[stream]), "offsets must follow each other per stream"
        self.chunks.append((stream, offset, data))
        self.data[stream] += data


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_output_by_stream_with_offsets(tmp_path: Path) -> None:
    sink = Collector()
    code = (
        "import sys\n"
        "for i in range(200):\n"
        "    sys.stdout.write(f'out {i}\\n'); sys.stdout.flush()\n"
        "    sys.stderr.write(f'err {i}\\n'); sys.stderr.flush()\n"
        "sys.stdout.buffer.write(b'x' * 300000)\n"
    )
    process = await Process.start(RunSpec(py(code), ENV), tmp_path, sink)
    result = await process.wait()

    assert result.exit_code == 0 and not result.timed_out and result.killed_by is None
    expected_out = "".join(f"out {i}\n" for i in range(200)).encode() + b"x" * 300000
    assert sink.data[OutputStream.STDOUT] == expected_out
    assert sink.data[OutputStream.STDERR] == "".join(f"err {i}\n" for i in range(200)).encode()
    assert all(len(data) <= 65536 for _, _, data in sink.chunks)


async def test_output_arrives_before_exit_without_newline(tmp_path: Path) -> None:
    sink = Collector()
    code = (
        "import os, sys, time\n"
        "sys.stdout.write('partial'); sys.stdout.flush()\n"
        "while not os.path.exists('go'): time.sleep(0.01)\n"
    )
    process = await Process.start(RunSpec(py(code), ENV), tmp_path, sink)

    async def seen() -> bool:
        return sink.data[OutputStream.STDOUT] == b"partial"

    await wait_until_async(seen, timeout=5, what="output without a newline")
    assert group_alive(process.pid), "the output must arrive while the process still runs"
    (tmp_path / "go").touch()
    assert (await asyncio.wait_for(process.wait(), 10)).exit_code == 0


async def test_exit_code_env_stdin_and_cwd(tmp_path: Path) -> None:
    sink = Collector()
    code = (
        "import os, sys\n"
        "data = sys.stdin.read()\n"
        "print(data.upper(), os.environ['GREETING'], os.getcwd(), sep='|')\n"
        "sys.exit(3)\n"
    )
    spec = RunSpec(py(code), {**ENV, "GREETING": "hi"}, stdin=b"hello " * 50000)
    result = await (await Process.start(spec, tmp_path, sink)).wait()

    assert result.exit_code == 3
    upper, greeting, cwd = sink.data[OutputStream.STDOUT].decode().rstrip("\n").split("|")
    assert upper == "HELLO " * 50000
    assert greeting == "hi"
    assert Path(cwd) == await asyncio.to_thread(tmp_path.resolve)


async def test_argv_is_not_run_through_a_shell(tmp_path: Path) -> None:
    sink = Collector()
    spec = RunSpec(("echo", "$HOME", "a;b", "*"), ENV)
    assert (await (await Process.start(spec, tmp_path, sink)).wait()).exit_code == 0
    assert sink.data[OutputStream.STDOUT] == b"$HOME a;b *\n"


async def test_missing_program_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await Process.start(RunSpec(("/nonexistent/program",), ENV), tmp_path, Collector())


async def test_kill_takes_the_whole_process_group(tmp_path: Path) -> None:
    sink = Collector()
    # The shell starts a grandchild that ignores nothing and would outlive a plain kill(pid).
    spec = RunSpec(("sh", "-c", "sleep 60 & echo started; wait"), ENV)
    process = await Process.start(spec, tmp_path, sink)

    async def started() -> bool:
        return b"started" in sink.data[OutputStream.STDOUT]

    await wait_until_async(started, timeout=5)
    assert group_alive(process.pid)

    await asyncio.wait_for(process.kill(1.0, "canceled"), 5)
    result = await process.wait()

    assert result.killed_by == "canceled"
    assert result.signal is not None and result.exit_code == 128 + result.signal
    wait_until(lambda: not group_alive(process.pid), timeout=5, what="process group gone")


async def test_kill_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    sink = Collector()
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = await Process.start(RunSpec(py(code), ENV), tmp_path, sink)

    async def ready() -> bool:
        return b"ready" in sink.data[OutputStream.STDOUT]

    await wait_until_async(ready, timeout=5)
    await asyncio.wait_for(process.kill(0.2, "canceled"), 5)
    result = await process.wait()

    assert result.signal == 9 and result.exit_code == 137
    assert not group_alive(process.pid)


async def test_timeout_terms_then_reports(tmp_path: Path) -> None:
    sink = Collector()
    spec = RunSpec(("sh", "-c", "sleep 60 & sleep 60"), ENV, timeout=0.3, kill_grace=1.0)
    process = await Process.start(spec, tmp_path, sink)
    result = await asyncio.wait_for(process.wait(), 10)

    assert result.timed_out and result.killed_by is None
    assert result.signal == 15 and result.exit_code == 143
    wait_until(lambda: not group_alive(process.pid), timeout=5, what="process group gone")


async def test_leftover_children_are_killed_when_the_leader_exits(tmp_path: Path) -> None:
    sink = Collector()
    spec = RunSpec(("sh", "-c", "sleep 60 >/dev/null 2>&1 & echo bye"), ENV)
    process = await Process.start(spec, tmp_path, sink)
    result = await asyncio.wait_for(process.wait(), 10)

    assert result.exit_code == 0
    assert sink.data[OutputStream.STDOUT] == b"bye\n"
    wait_until(lambda: not group_alive(process.pid), timeout=5, what="process group gone")


def test_inputs_written_with_modes(tmp_path: Path) -> None:
    write_inputs(
        tmp_path,
        [
            InputFile("a.txt", b"alpha"),
            InputFile("sub/dir/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        ],
    )
    assert (tmp_path / "a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "sub/dir/run.sh").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("path", ["/etc/passwd", "../escape", "a/../../b", "", "."])
def test_inputs_outside_the_workdir_refused(tmp_path: Path, path: str) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(InvalidPathError):
        write_inputs(workdir, [InputFile(path, b"x")])
    assert not (tmp_path / "escape").exists()


def test_inputs_through_a_symlink_out_refused(tmp_path: Path) -> None:
    workdir, outside = tmp_path / "work", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    (workdir / "link").symlink_to(outside)
    with pytest.raises(InvalidPathError):
        write_inputs(workdir, [InputFile("link/file", b"x")])
    assert not (outside / "file").exists()


def test_output_globs_resolved(tmp_path: Path) -> None:
    for name in ["out.txt", "report.json", "deep/a/b.json", "deep/c.txt", "skip.log"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "dir.json").mkdir()  # a directory is never an artifact
    outside = tmp_path.parent / f"{tmp_path.name}-secret.json"
    outside.write_text("secret")
    (tmp_path / "leak.json").symlink_to(outside)

    names = resolve_outputs(tmp_path, ["out.txt", "**/*.json", "*.txt", "missing/*"])

    assert names == ["deep/a/b.json", "out.txt", "report.json"]


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "a/../../*"])
def test_output_globs_outside_refused(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(InvalidPathError):
        resolve_outputs(tmp_path, [pattern])


async def test_exits_are_seen_with_pidfds_and_the_default_watcher_comes_back(
    tmp_path: Path,
) -> None:
    with children_watched_with_pidfds():
        if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
            watcher = asyncio.get_child_watcher()
            assert isinstance(watcher, asyncio.PidfdChildWatcher)
        started = [
            await Process.start(RunSpec(py(f"raise SystemExit({i})"), ENV), tmp_path, Collector())
            for i in range(5)
        ]
        results = [await process.wait() for process in started]
        assert [r.exit_code for r in results] == [0, 1, 2, 3, 4]
    if sys.version_info < (3, 12):
        assert not isinstance(asyncio.get_child_watcher(), asyncio.PidfdChildWatcher)
    result = await (await Process.start(RunSpec(py("pass"), ENV), tmp_path, Collector())).wait()
    assert result.exit_code == 0
