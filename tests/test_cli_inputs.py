"""`asrq transcribe DIR`: a folder stands for the files directly in it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from app.cli import cli, expand_inputs


def test_a_folder_stands_for_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "calls"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.wav", "a.flac", ".hidden.wav", "nested/c.wav"):
        (folder / name).write_bytes(b"x")
    extra = tmp_path / "z.mp3"
    extra.write_bytes(b"x")
    got = expand_inputs([folder, extra, folder / "a.flac"])
    assert got == [folder / "a.flac", folder / "b.wav", extra]  # sorted, hidden and nested left out, once each


def test_an_empty_folder_is_refused_before_anything_runs(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["transcribe", str(tmp_path)], env={"ASRQ_HOME": str(tmp_path / "home")})
    assert r.exit_code != 0 and "no files to transcribe" in r.output
    assert not (tmp_path / "home" / "asrq.db").exists()


def test_a_worker_with_nothing_left_to_do_is_stopped_at_once() -> None:
    """Once every job of the run finished, the local worker holds no work: it is not given the seconds of
    a warm shutdown (here: a process that would never end on SIGTERM)."""
    import subprocess
    import sys

    from app.embedded import stop_worker

    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    stop_worker(p, idle=True)
    assert p.returncode == -9
