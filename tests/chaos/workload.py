"""The seeded workload: recordings of every length, bad inputs meant to fail, their tenants, sources and
options (one Item each, the same for the same seed), and the loopback servers that serve them as http(s)://
and s3:// sources."""

from __future__ import annotations

import functools
import http.server
import random
import re
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.modes import QUICK, Mode
from tests.services import AUDIO

# English clips only: the bundled model is tiny.en, and a deterministic baseline needs sane decoding
CLIPS = ["en_jfk_ask_not_11s.flac", "en_sr_one_two_three.wav", "en_vosk_digits.wav",
         "en_librispeech_1995-1837-0001.wav", "en_librispeech_2412-153948-0000.flac",
         "en_librispeech_2412-153948-0001.flac", "en_librivox_sonnet001_53s.wav",
         "en_fw_stereo_diarization_2ch.wav"]
TENANTS = ("acme", "globex", "initech")
SOURCE_BUCKET = "asrq-sources"


@dataclass
class Item:
    idx: int
    name: str  # file name (also the URL / object name)
    kind: str  # short | medium | long | bad
    source: str  # upload | http | https | s3 (batch items: batch=n)
    tenant: str
    expect: str  # ok | fail
    path: Path | None = None
    uri: str | None = None
    options: dict = field(default_factory=dict)
    batch: int | None = None
    note: str = ""
    base: int | None = None  # a copy fed in during the chaos run: the item whose baseline it must equal

    @property
    def label(self) -> str:
        return f"#{self.idx:03d} {self.kind}/{self.source}{'' if self.batch is None else f'[batch{self.batch}]'} " \
               f"{self.name}{'' if self.base is None else f' (copy of #{self.base:03d})'}"


def feed_candidates(items: list[Item]) -> list[Item]:
    """The items a feeder copies to keep jobs flowing through every phase: good short recordings."""
    return [it for it in items if it.kind == "short" and it.expect == "ok" and it.path is not None]


def copy_item(it: Item, idx: int, tenant: str) -> Item:
    """An upload of the same recording, under a new index (its own idempotency key)."""
    return Item(idx, it.name, "short", "upload", tenant, "ok", it.path, None, dict(it.options), None,
                "fed in", it.idx)


def _clip_audio() -> dict:
    from tests.audio_fixtures import load_clip

    return {n: load_clip(AUDIO / n) for n in CLIPS}


def _concat(path: Path, rng: random.Random, clips: dict, duration_s: float, pause_s: tuple[float, float]) -> Path:
    """Real clips end to end with pauses of seeded length, streamed into a FLAC of about duration_s."""
    import numpy as np

    from tests.audio_fixtures import SR, encode_mono

    def blocks():  # noqa: ANN202
        total, target = 0, int(duration_s * SR)
        yield np.zeros(SR, np.float32)
        while total < target:
            clip = clips[rng.choice(CLIPS)]
            gap = np.zeros(int(rng.uniform(*pause_s) * SR), np.float32)
            for b in (clip, gap):
                yield b
                total += len(b)

    return encode_mono(path, blocks())


def build_workload(mode: Mode, seed: int, folder: Path, tls: bool, s3_sources: bool,
                   untrusted_tls: bool = False) -> list[Item]:
    """The same seed gives the same recordings, sources, tenants and options."""
    from tests import bad_inputs as bi

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clips = None
    items: list[Item] = []
    uri_sources = ["http"] + (["https"] if tls else []) + (["s3"] if s3_sources else [])

    def add(kind: str, name: str, path: Path | None, expect: str = "ok", **kw) -> Item:  # noqa: ANN003
        it = Item(len(items), name, kind, kw.pop("source", None) or rng.choice(["upload", "upload", *uri_sources]),
                  rng.choice(TENANTS), expect, path, **kw)
        items.append(it)
        return it

    short_clips = CLIPS if mode.short_max_s > 60 else [c for c in CLIPS if "53s" not in c]
    for _ in range(mode.n_short):
        n = rng.choice(short_clips)
        dest = folder / f"s{len(items):03d}-{n}"
        if not dest.exists():
            shutil.copyfile(AUDIO / n, dest)
        add("short", dest.name, dest)
    for _ in range(mode.n_medium):
        dest = folder / f"m{len(items):03d}.flac"
        dur, sub = rng.uniform(*mode.medium_s), random.Random(rng.random())
        if not dest.exists():
            clips = clips or _clip_audio()
            _concat(dest, sub, clips, dur, (0.3, 3.0))
        add("medium", dest.name, dest, note=f"{dur:.0f} s")
    for _ in range(mode.n_long):
        dest = folder / f"l{len(items):03d}.flac"
        dur, sub = rng.uniform(*mode.long_s), random.Random(rng.random())
        if not dest.exists():
            clips = clips or _clip_audio()
            _concat(dest, sub, clips, dur, mode.long_pause_s)
        add("long", dest.name, dest, note=f"{dur / 60:.1f} min")
    # inputs meant to fail, each with a reason a user can act on
    bad_dir = folder / "bad"
    bad_dir.mkdir(exist_ok=True)
    makers = [bi.make_truncated_flac, bi.make_pdf, bi.make_text, bi.make_video_without_audio, bi.make_png]
    for maker in makers[: 4 if mode is QUICK else 5]:
        p = maker(bad_dir)
        add("bad", p.name, p, "fail", source=rng.choice(["upload", "http"]))
    add("bad", "missing.wav", None, "fail", source="http", note="the source server answers 404")
    if untrusted_tls:
        p = bad_dir / "untrusted-cert.wav"
        shutil.copyfile(AUDIO / bi.SPEECH_CLIP, p)
        add("bad", p.name, p, "fail", source="https-untrusted", note="https with an untrusted certificate")
    if s3_sources:
        add("bad", "no-such-object.wav", None, "fail", source="s3", note="no such object")
    # a model that is not installed: refused at submission (4xx) or FAILED with the reason (issue 9, 2)
    add("bad", f"s{0:03d}-{items[0].name.split('-', 1)[1]}", items[0].path, "fail", source="upload",
        options={"engine": "funasr", "model": "paraformer-zh"}, note="model not installed")
    # some URI jobs go in batches (POST /v1/jobs/batch), the rest one by one
    uri_items = [it for it in items if it.source in ("http", "https", "s3") and it.expect == "ok"]
    rng.shuffle(uri_items)
    for b in range(mode.n_batches):
        for it in uri_items[b * mode.batch_size : (b + 1) * mode.batch_size]:
            it.batch, it.tenant = b, "acme"  # one batch, one tenant
    return items


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_a) -> None:  # noqa: ANN002
        pass


class SourceServer:
    """Loopback servers of the workload folder for http(s):// sources: plain HTTP, HTTPS with a
    certificate the deployment is told to trust (where it has a setting for that), and HTTPS with a
    certificate nobody trusts (a source that must fail with a reason)."""

    def __init__(self, folder: Path, tmp: Path) -> None:
        self.handler = functools.partial(_Quiet, directory=str(folder))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.servers = {"http": self.http}
        self.cafile = None
        if shutil.which("openssl"):
            for name in ("https", "https-untrusted"):
                cert = self._tls(name, tmp)
                if cert and name == "https":
                    self.cafile = cert
        for srv in self.servers.values():
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def _tls(self, name: str, tmp: Path) -> Path | None:
        key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True)
        if r.returncode != 0:
            return None
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.servers[name] = srv
        return cert

    def url(self, scheme: str, rel: str) -> str:
        srv = self.servers[scheme]
        host = "127.0.0.1" if scheme == "http" else "localhost"
        return f"{scheme.split('-')[0]}://{host}:{srv.server_address[1]}/{rel}"

    def close(self) -> None:
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


class Blackhole:
    """A webhook receiver that accepts every connection and never answers: each try to it lasts the
    sender's whole timeout (a receiver that hangs, or a firewall that drops the packets after the
    handshake). Connections are held until close()."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def give_webhooks(items: list[Item], seed: int, share: float, url: str) -> int:
    """A seeded share of the items (their own random stream: the workload stays as the seed made it)
    carry a webhook_url to ``url``."""
    rng = random.Random(seed * 7727 + 29)
    n = 0
    for it in items:
        if rng.random() < share:
            it.options["webhook_url"] = url
            n += 1
    return n


def tls_trust_setting() -> str | None:
    """A setting naming CA certificates to trust for https:// sources, if this tree has one. The source
    download pins the checked address with trust_env off, so SSL_CERT_FILE does not reach it."""
    from app.settings import Settings

    for name in Settings.model_fields:
        if re.search(r"ca_bundle|ca_file|cafile|ca_cert|ssl_ca|tls_ca|trusted_ca|source_ca", name):
            return name
    return None


def s3_source_setting() -> str | None:
    """The allow-list of buckets/prefixes that s3:// sources may come from, if this tree has one."""
    from app.settings import Settings

    for name in Settings.model_fields:
        if re.search(r"s3.*(allow|source)|source.*(allow|bucket|prefix)", name) and "private" not in name \
                and "file" not in name:
            return name
    return None


def publish_sources(items: list[Item], sources: SourceServer, inputs: Path, s3) -> None:  # noqa: ANN001
    """Give every URI item its URI: a URL of the source server, or an object uploaded to the source bucket."""
    for it in items:
        if it.source in ("http", "https") and it.uri is None:
            rel = it.path.relative_to(inputs).as_posix() if it.path else it.name
            it.uri = sources.url(it.source, rel)
        elif it.source == "https-untrusted":
            it.uri = sources.url(it.source, it.path.relative_to(inputs).as_posix())
        elif it.source == "s3":
            key = f"inbox/{it.name}"
            if it.path:
                s3.upload_file(str(it.path), SOURCE_BUCKET, key)
            it.uri = f"s3://{SOURCE_BUCKET}/{key}"
