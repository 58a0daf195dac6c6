"""Models by hub name: `asrq models pull` downloads a FunASR model once through the hub clients FunASR uses,
`asrq models list` shows it with its size, and jobs name it by FunASR short name, hub id or folder; a job naming a
hub model nobody pulled gets a 422 that says how to install it. Nothing but `pull` ever reaches a hub.

What is missing here is the network, not the code path: the test serves a local mirror of both hubs (the API
routes huggingface_hub and modelscope call: repo info / file list, then each file) holding tiny random-weight
Paraformers (tests/tiny_paraformer.py), and points the clients at it with HF_ENDPOINT / MODELSCOPE_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from tests.services import AUDIO, ROOT, free_port, wait_until
from tests.test_api_validation import ACME, api  # noqa: F401 - the in-process API fixture
from tests.tiny_paraformer import build_tiny_paraformer

MS_PARAFORMER_ZH = "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
HF_PARAFORMER_ZH = "funasr/paraformer-zh"


class HubMirror:
    """Hugging Face and ModelScope, as far as their download clients see them, for local folders."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                mirror.handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                mirror.handle(self, head=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HubMirror":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, bytes]:
        folder = self.repos[repo]
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def downloads(self) -> list[str]:
        return [r for r in self.requests if "/resolve/" in r or "FilePath=" in r]

    def handle(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append(f"{h.command} {h.path}")
        url = urlparse(h.path)
        path, query = unquote(url.path), parse_qs(url.query)

        def send(code: int, body: bytes = b"", headers: dict | None = None) -> None:
            h.send_response(code)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)

        def send_json(doc: object) -> None:
            send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

        def repo_or_404(repo: str) -> dict[str, bytes] | None:
            if repo in self.repos:
                return self.files(repo)
            send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return None

        # Hugging Face: repo info, file tree, then one resolve per file
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/[^/]+", path):
            if (files := repo_or_404(m[1])) is not None:
                send_json({"id": m[1], "sha": self.commit(m[1]), "siblings": [{"rfilename": f} for f in files]})
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(/.*)?", path):
            if (files := repo_or_404(m[1])) is not None:
                send_json([{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                           for f, b in files.items()])
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            if (files := repo_or_404(m[1])) is not None:
                body = files.get(m[2])
                if body is None:
                    send(404, b"", {"X-Error-Code": "EntryNotFound"})
                else:
                    send(200, body, {"X-Repo-Commit": self.commit(m[1]), "ETag": f'"{hashlib.sha1(body).hexdigest()}"'})
        # ModelScope: the file list, then one download per file
        elif m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo/files", path):
            if (files := repo_or_404(m[1])) is not None:
                send_json({"Code": 200, "Success": True, "Data": {"Files": [
                    {"Path": f, "Name": f.rsplit("/", 1)[-1], "Type": "blob", "Size": len(b),
                     "Sha256": hashlib.sha256(b).hexdigest(), "Revision": self.commit(m[1])}
                    for f, b in files.items()]}})
        elif m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo", path):
            if (files := repo_or_404(m[1])) is not None:
                body = files.get(query.get("FilePath", [""])[0])
                send(404) if body is None else send(200, body, {"Content-Type": "application/octet-stream"})
        else:
            send(404, b"{}", {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    src = tmp_path_factory.mktemp("hub-src")
    repos = {HF_PARAFORMER_ZH: build_tiny_paraformer(src / "hf-paraformer"),
             MS_PARAFORMER_ZH: build_tiny_paraformer(src / "ms-seaco", seaco=True)}
    with HubMirror(repos) as m:
        yield m


def _hub_env(tmp: Path, models_dir: Path, mirror_url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASRQ_", "HF_", "MODELSCOPE_"))}
    env.update(ASRQ_HOME=str(tmp / "home"), ASRQ_MODELS_DIR=str(models_dir), HF_HOME=str(tmp / "hf-home"),
               MODELSCOPE_CACHE=str(tmp / "ms-cache"), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    if mirror_url:
        env.update(HF_ENDPOINT=mirror_url, MODELSCOPE_ENDPOINT=mirror_url)
    return env


def asrq(env: dict, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT)


def _same_files(a: Path, b: Path) -> bool:
    names = lambda d: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"asrq-model.json"}  # noqa: E731
    return names(a) == names(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names(a))


# ---- pull and list ---------------------------------------------------------------------------------------------


def test_pull_once_from_either_hub_then_list_with_sizes(mirror, tmp_path):
    models = tmp_path / "models"
    env = _hub_env(tmp_path, models, mirror.url)

    r = asrq(env, "models", "pull", "paraformer-zh", "--hub", "hf")
    assert r.returncode == 0, r.stderr[-3000:]
    hf_folder = models / "funasr--paraformer-zh"
    assert f"{HF_PARAFORMER_ZH} installed in {hf_folder}" in r.stdout, r.stdout
    assert _same_files(hf_folder, mirror.repos[HF_PARAFORMER_ZH])
    manifest = json.loads((hf_folder / "asrq-model.json").read_text())
    assert manifest["hub"] == "hf" and manifest["model_id"] == HF_PARAFORMER_ZH
    assert {"paraformer-zh", "paraformer", HF_PARAFORMER_ZH}.issubset(manifest["names"])
    assert not (hf_folder / ".cache").exists() and sorted(p.name for p in models.iterdir()) == [hf_folder.name]

    # once: a second pull downloads nothing
    before = len(mirror.downloads())
    r = asrq(env, "models", "pull", HF_PARAFORMER_ZH, "--hub", "hf")
    assert r.returncode == 0 and "already installed" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert len(mirror.downloads()) == before

    # ModelScope, FunASR's default hub: its paraformer-zh is the SeACo model
    r = asrq(env, "models", "pull", "paraformer-zh")
    assert r.returncode == 0, r.stderr[-3000:]
    ms_folder = models / MS_PARAFORMER_ZH.replace("/", "--")
    assert _same_files(ms_folder, mirror.repos[MS_PARAFORMER_ZH])
    assert any("/api/v1/models/" in q for q in mirror.requests)

    r = asrq(env, "models", "list", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(m["engine"], m["model"]): m for m in json.loads(r.stdout)["models"]}
    for folder, hub_id in ((hf_folder, HF_PARAFORMER_ZH), (ms_folder, MS_PARAFORMER_ZH)):
        row = rows[("funasr", folder.name)]
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert row["size_bytes"] == size and size > 10_000 and row["hub_id"] == hub_id, row
    assert ("whisper", "bundled:tiny.en") in rows and rows[("whisper", "bundled:tiny.en")]["size_bytes"] > 30e6
    r = asrq(env, "models", "list")
    assert r.returncode == 0 and "hf:funasr/paraformer-zh" in r.stdout and " MiB" in r.stdout, r.stdout


def test_resolution_by_short_name_hub_id_and_folder_reads_only_the_folder(mirror, tmp_path, monkeypatch):
    from app.catalog.models import model_installed, model_location
    from app.settings import get_settings

    models = tmp_path / "models"
    r = asrq(_hub_env(tmp_path, models, mirror.url), "models", "pull", HF_PARAFORMER_ZH, "--hub", "hf")
    assert r.returncode == 0, r.stderr[-3000:]
    folder = models / "funasr--paraformer-zh"

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASRQ_MODELS_DIR", str(models))
    get_settings.cache_clear()

    # from here on, any connection attempt fails the test
    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError(f"resolving a model name tried the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    try:
        for name in ("paraformer-zh", "paraformer", HF_PARAFORMER_ZH, "funasr--paraformer-zh"):
            assert model_installed("funasr", name), name
            assert model_location("funasr", name, models) == folder
        for name in ("iic/SenseVoiceSmall", "SenseVoiceSmall", "ct-punc", "nobody/nothing", ".pull-x"):
            assert not model_installed("funasr", name), name
        assert not model_installed("whisper", "paraformer-zh")  # a FunASR folder is no Whisper model
        from app.errors import ModelUnavailable
        from workers.engines.registry import get_engine

        with pytest.raises(ModelUnavailable, match="asrq models pull iic/SenseVoiceSmall"):
            get_engine("funasr", "iic/SenseVoiceSmall")  # a worker refuses; it never downloads
    finally:
        get_settings.cache_clear()


def test_pull_without_network_fails_clearly_and_leaves_nothing(tmp_path):
    models = tmp_path / "models"
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: what a machine without network sees
    env = _hub_env(tmp_path, models, closed)
    t0 = time.monotonic()
    r = asrq(env, "models", "pull", "paraformer-zh", "--hub", "hf")
    assert r.returncode != 0, r.stdout
    assert f"could not download {HF_PARAFORMER_ZH} from Hugging Face at {closed}" in r.stderr, r.stderr[-2000:]
    assert "no network?" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = asrq(env, "models", "pull", "iic/SenseVoiceSmall", timeout_s=240)
    assert r.returncode != 0 and "could not download iic/SenseVoiceSmall from ModelScope" in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t0 < 180
    assert not models.exists() or list(models.iterdir()) == []  # no half-downloaded folder left behind

    r = asrq(env, "models", "pull", "SenseVoiceSmall")
    assert r.returncode != 0 and "neither a FunASR short name" in r.stderr and "iic/SenseVoiceSmall" in r.stderr
    env.pop("ASRQ_MODELS_DIR")
    r = asrq(env, "models", "pull", "paraformer-zh")
    assert r.returncode != 0 and "set ASRQ_MODELS_DIR" in r.stderr, r.stderr


def test_a_repo_that_is_no_funasr_model_is_not_installed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("no weights here")
    with HubMirror({"someone/readme-only": src}) as m:
        env = _hub_env(tmp_path, tmp_path / "models", m.url)
        r = asrq(env, "models", "pull", "someone/readme-only", "--hub", "hf")
    assert r.returncode != 0 and "is not a FunASR model folder" in r.stderr and "README.md" in r.stderr, r.stderr
    assert list((tmp_path / "models").iterdir()) == []


def test_api_422_says_how_to_install_a_hub_model(api, tmp_path):  # noqa: F811
    models = tmp_path / "models"
    build_tiny_paraformer(models / "tiny-paraformer")
    api.c.app.state.settings.models_dir = models
    for name in ("paraformer-zh", "iic/SenseVoiceSmall"):
        r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": name})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert f"`asrq models pull {name}`" in detail and "installed: tiny-paraformer" in detail, detail
    # a plain folder name that is missing gets no pull hint (there is nothing to pull by that name)
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "my-own-model"})
    assert r.status_code == 422 and "asrq models pull" not in r.text, r.text


# ---- a job naming a pulled model by hub name, on the real stack ------------------------------------------------


@pytest.mark.slow
def test_job_naming_a_pulled_model_by_hub_name_completes(stack, mirror):
    models = Path(stack.env["ASRQ_MODELS_DIR"])
    env = _hub_env(stack.tmp, models, mirror.url)
    r = asrq(env, "models", "pull", "paraformer-zh")  # while the API and workers run: seen at once
    assert r.returncode == 0, r.stderr[-3000:]
    folder = MS_PARAFORMER_ZH.replace("/", "--")
    with stack.client() as c:
        job = c.submit_file(AUDIO / "zh_funasr_binhai_6s.wav",
                            {"engine": "funasr", "model": "paraformer-zh", "hotwords": ["滨海", "广州"]})
        assert job["options"]["model"] == folder and job["options"]["hotwords"] == ["滨海", "广州"], job
        by_id = c.submit_file(AUDIO / "zh_funasr_binhai_6s.wav", {"engine": "funasr", "model": MS_PARAFORMER_ZH})
        done = c.wait([job["id"], by_id["id"]], timeout_s=300)
        for jid in (job["id"], by_id["id"]):
            assert done[jid]["state"] == "COMPLETED", (done[jid], stack.logs())
        doc = json.loads(c.transcript(job["id"], "json"))
    assert doc["duration_s"] > 5 and doc["segments"], doc  # random weights: some text, real timestamps
    assert all(0 <= s["start"] <= s["end"] <= doc["duration_s"] + 0.1 for s in doc["segments"])


@pytest.mark.slow
def test_worker_fails_a_job_whose_engine_turns_out_to_take_no_hotwords(stack):
    """The API cannot judge a plug-in engine's models; once loaded, one that takes no hotwords fails the job
    with the reason instead of ignoring them."""
    from app.catalog.plugins import engines

    if "instant" not in engines():
        pytest.skip("the benchmark's instant engine is not installed (make bench installs it)")
    with stack.client() as c:
        job = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac", {"engine": "instant", "hotwords": ["asrq"]})
        plain = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac", {"engine": "instant"})
        done = c.wait([job["id"], plain["id"]], timeout_s=180)
    assert done[job["id"]]["state"] == "FAILED", done[job["id"]]
    assert "does not support hotwords" in done[job["id"]]["error"], done[job["id"]]
    assert done[plain["id"]]["state"] == "COMPLETED", (done[plain["id"]], stack.logs())


@pytest.mark.slow
def test_embedded_command_takes_a_pulled_model_by_hub_id(mirror, tmp_path):
    models = tmp_path / "models"
    env = _hub_env(tmp_path, models, mirror.url)
    r = asrq(env, "models", "pull", HF_PARAFORMER_ZH, "--hub", "hf")
    assert r.returncode == 0, r.stderr[-3000:]
    env.pop("HF_ENDPOINT")
    env.pop("MODELSCOPE_ENDPOINT")  # the one-shot command itself needs no hub at all
    r = asrq(env, "transcribe", str(AUDIO / "zh_funasr_binhai_6s.wav"), "--engine", "funasr", "--model",
             HF_PARAFORMER_ZH, "--format", "json", "--out", str(tmp_path / "out"), "--timeout", "240", timeout_s=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    doc = json.loads((tmp_path / "out" / "zh_funasr_binhai_6s.json").read_text())
    assert doc["duration_s"] > 5
