"""Source URI checks (schemes, SSRF), safe file names, and the local object store's key rules.

No name is ever resolved over the network: hosts are IP literals or 'localhost', and public-name cases
use a fake resolver.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket

import pytest

from app.errors import BadSource, PermanentError
from app.settings import Settings
from app.sources import check_public_host, file_source_path, filename_from_uri, safe_filename, validate_source_uri
from app.storage import LocalStore, ObjectNotFound, check_key, store_from_url


@pytest.fixture
def settings(monkeypatch, tmp_path) -> Settings:
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    return Settings(home=tmp_path, allow_private_sources=False, allow_file_sources=False)


def _is_ip_literal(h: str) -> bool:
    try:
        ipaddress.ip_address(h.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(h)  # the legacy forms: 127.1, 0x7f000001, 2130706433
        return True
    except OSError:
        return False


@pytest.fixture
def no_dns(monkeypatch):
    """Fail the test if anything but an IP literal or localhost reaches the real resolver."""
    real = socket.getaddrinfo

    def guarded(host, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        h = host.decode() if isinstance(host, bytes) else str(host)
        if h != "localhost" and not _is_ip_literal(h):
            raise AssertionError(f"test tried to resolve {h!r}")
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def fake_resolver(monkeypatch, table: dict[str, list[str]]) -> list[str]:
    seen: list[str] = []

    def resolve(host, port, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        seen.append(host)
        if _is_ip_literal(host):
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))]
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return seen


# ---- safe_filename ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("talk.wav", "talk.wav"),
    ("../../etc/passwd", "passwd"),
    ("..", "audio"),
    ("../", "audio"),
    ("a/..", "audio"),
    ("dir/sub/rec.mp3", "rec.mp3"),
    ("C:\\Users\\me\\rec.wav", "rec.wav"),
    ("..\\..\\win.ini", "win.ini"),
    ("/abs/path/x.flac", "x.flac"),
    ("bad\x00name\x07\x1b.wav", "badname.wav"),
    ("new\nline\r.wav", "newline.wav"),
    ("zero\u200bwidth\u202eltr.wav", "zerowidthltr.wav"),  # format (Cf) characters removed
    ("日本語の録音.wav", "日本語の録音.wav"),
    ("Müller-Lüdenscheidt 2024.ogg", "Müller-Lüdenscheidt 2024.ogg"),
    ("e\u0301te\u0301.wav", "\u00e9t\u00e9.wav"),  # NFC
    ("semi;colon|pipe<>\"q'.wav", "semi_colon_pipe_q_.wav"),
    ("  .hidden. ", "hidden"),
    ("", "audio"),
    (None, "audio"),
    ("...", "audio"),
])
def test_safe_filename(raw, expected):
    assert safe_filename(raw) == expected


def test_safe_filename_is_one_safe_component():
    nasty = ["../" * 50 + "x", "\\\\server\\share\\..\\y", "a/b\\c/../d", "\x00", "/", "\\", ". .", "x" * 1000]
    for raw in nasty:
        name = safe_filename(raw)
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert not any(ord(c) < 32 or ord(c) == 127 for c in name)
        assert len(name) <= 200
        check_key(f"jobs/x/source/{name}")  # usable as a storage key component


def test_safe_filename_fallback():
    assert safe_filename("../..", fallback="upload.bin") == "upload.bin"


def test_filename_from_uri():
    assert filename_from_uri("s3://bucket/dir/My%20Talk.wav") == "My Talk.wav"
    assert filename_from_uri("https://h.example/a/..%2F..%2Fetc%2Fpasswd?x=1") == "passwd"
    assert filename_from_uri("https://h.example/") == "audio"


def test_file_source_path():
    assert str(file_source_path("file:///data/my%20rec.wav")) == "/data/my rec.wav"


# ---- validate_source_uri ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "ftp://127.0.0.1/a.wav",
    "gopher://127.0.0.1:70/_x",
    "data:audio/wav;base64,AAAA",
    "javascript:alert(1)",
    "dict://127.0.0.1:11211/stat",
    "/etc/passwd",
    "bucket/key.wav",
    "",
])
def test_unsupported_schemes_rejected(settings, no_dns, uri):
    with pytest.raises(BadSource, match="unsupported source_uri scheme"):
        validate_source_uri(uri, settings)


def test_file_sources_only_when_allowed(settings, no_dns):
    with pytest.raises(BadSource, match="file://"):
        validate_source_uri("file:///etc/passwd", settings)
    allowed = settings.model_copy(update={"allow_file_sources": True})
    assert validate_source_uri("file:///data/a.wav", allowed) == "file:///data/a.wav"


def test_plain_http_only_when_private_sources_allowed(settings, no_dns):
    with pytest.raises(BadSource, match="http://"):
        validate_source_uri("http://127.0.0.1:8000/a.wav", settings)
    lab = settings.model_copy(update={"allow_private_sources": True})
    assert validate_source_uri("http://127.0.0.1:8000/a.wav", lab) == "http://127.0.0.1:8000/a.wav"
    assert validate_source_uri("https://10.0.0.1/a.wav", lab) == "https://10.0.0.1/a.wav"


@pytest.mark.parametrize("uri", [
    "https://127.0.0.1/x",
    "https://127.0.0.1:8443/x",
    "https://localhost/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/x",
    "https://172.16.5.4/x",
    "https://192.168.1.1/x",
    "https://100.64.0.1/x",
    "https://0.0.0.0/x",
    "https://224.0.0.1/x",
    "https://[::1]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://[fe80::1]/x",
    "https://[fc00::1]/x",
    "https://2130706433/x",  # 127.0.0.1 as one decimal number
    "https://0x7f000001/x",
    "https://127.1/x",
    "https://user:pw@127.0.0.1/x",
])
def test_private_hosts_rejected(settings, no_dns, uri):
    with pytest.raises(BadSource, match="private, loopback or link-local|cannot resolve"):
        validate_source_uri(uri, settings)


def test_public_host_accepted_with_fake_resolver(settings, monkeypatch):
    seen = fake_resolver(monkeypatch, {"media.example.org": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    uri = "https://media.example.org/talks/a.wav?sig=abc"
    assert validate_source_uri(uri, settings) == uri
    assert seen == ["media.example.org"]
    assert validate_source_uri("https://93.184.215.14/a.wav", settings)
    assert validate_source_uri("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/a.wav", settings)


def test_name_resolving_to_any_private_address_rejected(settings, monkeypatch):
    fake_resolver(monkeypatch, {"rebind.example.org": ["93.184.215.14", "10.1.2.3"],
                                "meta.example.org": ["169.254.169.254"],
                                "v6.example.org": ["fe80::1%eth0"]})
    for host in ("rebind.example.org", "meta.example.org", "v6.example.org"):
        with pytest.raises(BadSource, match="private"):
            validate_source_uri(f"https://{host}/x", settings)


def test_unresolvable_host_rejected(settings, monkeypatch):
    fake_resolver(monkeypatch, {})
    with pytest.raises(BadSource, match="cannot resolve"):
        validate_source_uri("https://nowhere.example.org/x", settings)


def test_https_without_host_rejected(settings, no_dns):
    with pytest.raises(BadSource, match="no host"):
        validate_source_uri("https:///path/only.wav", settings)


@pytest.mark.parametrize("uri", [
    "https://127.0.0.1:99999/x",  # port out of range
    "https://127.0.0.1:abc/x",  # port not a number
    "https://[::1/x",  # unbalanced IPv6 bracket
    "s3://[bucket/key",
])
def test_malformed_uri_is_a_bad_source_not_a_crash(settings, no_dns, uri):
    with pytest.raises(BadSource):
        validate_source_uri(uri, settings)


@pytest.mark.parametrize("host", ["a" * 64 + ".invalid", "a..b"])
def test_unencodable_host_name_is_a_bad_source(settings, host):
    # the resolver refuses these names while encoding them (IDNA), before any lookup could happen
    with pytest.raises(UnicodeError):
        host.encode("idna")
    with pytest.raises(BadSource):
        validate_source_uri(f"https://{host}/x", settings)


@pytest.mark.parametrize("uri", [
    "s3://bucket",
    "s3://bucket/",
    "s3:///key.wav",
    "s3://bucket/a/../b.wav",
    "s3://bucket/../b.wav",
    "s3://bucket/a/%2e%2e/b.wav",
    "s3://bucket/..",
])
def test_bad_s3_uris_rejected(settings, uri):
    with pytest.raises(BadSource):
        validate_source_uri(uri, settings)


@pytest.mark.parametrize("uri", [
    "s3://bucket/a\nb.wav",
    "s3://bucket/a\x00b.wav",
    "https://127.0.0.1/\r\nHost: evil",
    "s3://bucket/key\t.wav",
])
def test_control_characters_rejected(settings, no_dns, uri):
    with pytest.raises(BadSource, match="control characters"):
        validate_source_uri(uri, settings)


@pytest.mark.parametrize("uri", ["s3://bucket/key", "s3://my-bucket/deep/dir/talk%20one.wav", "S3://bucket/k.wav",
                                 "s3://bucket/a..b/c...wav"])
def test_s3_uris_accepted(settings, no_dns, uri):
    allowed = settings.model_copy(update={"s3_source_allow": "bucket,my-bucket/deep/"})
    assert validate_source_uri(uri, allowed) == uri


# ---- s3:// allow-list ------------------------------------------------------------------------------------------


def _s3(settings: Settings, allow: str, storage: str = "s3://asrq-data/svc") -> Settings:
    return settings.model_copy(update={"s3_source_allow": allow, "storage_url": storage})


def test_s3_sources_denied_by_default(settings, no_dns):
    for uri in ("s3://bucket/key.wav", "s3://asrq-data/inbox/a.wav"):
        with pytest.raises(BadSource, match="does not allow"):
            validate_source_uri(uri, settings)
        with pytest.raises(BadSource, match="does not allow"):
            validate_source_uri(uri, settings, "acme")


S3_PREFIX_CASES = [
    ("s3://media/calls/a.wav", True),
    ("s3://media/calls/2024/05/a.wav", True),
    ("s3://media/calls//a.wav", True),  # literally under calls/ in S3 too
    ("s3://media/calls-private/a.wav", False),  # a prefix matches whole segments, not characters
    ("s3://media/callsx.wav", False),
    ("s3://media/calls", False),  # the folder's name itself is no object under it
    ("s3://media/other/a.wav", False),
    ("s3://media/a.wav", False),
    ("s3://media2/calls/a.wav", False),
    ("s3://medi/calls/a.wav", False),
    ("s3://media/calls/../secret/a.wav", False),
    ("s3://media/calls/%2e%2e/secret/a.wav", False),
    ("s3://media/calls/./a.wav", False),
    ("s3://media/calls%2F..%2Fsecret/a.wav", False),  # decoded the way the worker reads it
    ("s3://media/calls/a%00b.wav", False),
    ("s3://user@media/calls/a.wav", False),
    ("s3://media:443/calls/a.wav", False),
    ("s3://open/anything/at/all.wav", True),  # a whole bucket
    ("s3://other-bucket/calls/a.wav", False),
]


def test_s3_prefix_matches_whole_segments(settings, no_dns):
    s = _s3(settings, "media/calls/, open")
    for uri, ok in S3_PREFIX_CASES:
        if ok:
            assert validate_source_uri(uri, s) == uri
        else:
            with pytest.raises(BadSource):
                validate_source_uri(uri, s)


def test_s3_per_tenant_entries(settings, no_dns):
    s = _s3(settings, "shared/pub, acme=media/acme/, globex=media/globex/calls, globex=raw")
    assert validate_source_uri("s3://shared/pub/a.wav", s, "acme")
    assert validate_source_uri("s3://shared/pub/a.wav", s, "globex")
    assert validate_source_uri("s3://media/acme/a.wav", s, "acme")
    assert validate_source_uri("s3://media/globex/calls/a.wav", s, "globex")
    assert validate_source_uri("s3://raw/x/y.wav", s, "globex")
    for uri, tenant in [("s3://media/acme/a.wav", "globex"), ("s3://media/globex/calls/a.wav", "acme"),
                        ("s3://raw/x/y.wav", "acme"), ("s3://media/acme/a.wav", None),
                        ("s3://media/acme/a.wav", "acme2"), ("s3://media/globex/a.wav", "globex")]:
        with pytest.raises(BadSource, match="does not allow"):
            validate_source_uri(uri, s, tenant)


def test_own_storage_is_never_a_source(settings, no_dns):
    for storage, uri in [
        ("s3://asrq-data/svc", "s3://asrq-data/svc/jobs/1/source/a.wav"),
        ("s3://asrq-data/svc/", "s3://asrq-data/svc/jobs/1/audio.s16le"),
        ("s3://asrq-data/svc", "s3://ASRQ-DATA/svc/jobs/1/audio.s16le"),
        ("s3://asrq-data", "s3://asrq-data/inbox/a.wav"),  # storage at the bucket root owns the whole bucket
        ("s3://asrq-data/a/b", "s3://asrq-data/a/b/jobs/x/source/y.wav"),
    ]:
        s = _s3(settings, "asrq-data, ASRQ-DATA, acme=asrq-data/svc/", storage)
        for tenant in (None, "acme"):
            with pytest.raises(BadSource, match="own storage"):
                validate_source_uri(uri, s, tenant)
    # by whole segments here too: a neighbour of the storage prefix stays readable
    s = _s3(settings, "asrq-data", "s3://asrq-data/svc")
    assert validate_source_uri("s3://asrq-data/svc-inbox/a.wav", s)
    assert validate_source_uri("s3://asrq-data/inbox/svc/a.wav", s)


def test_s3_source_allow_is_checked_at_start_up(settings):
    from pydantic import ValidationError

    from app.settings import S3SourceRule

    s = Settings(home=settings.home, s3_source_allow=" media/calls/ ,acme=s3://raw, b/date=2024-01-01/ ")
    assert s.s3_source_rules() == (S3SourceRule(None, "media", ("calls",)), S3SourceRule("acme", "raw", ()),
                                   S3SourceRule(None, "b", ("date=2024-01-01",)))
    for bad in ("=media", "acme=", "media/../x", "me dia", "media/a//b", "user@media", "acme=me:dia"):
        with pytest.raises(ValidationError, match="ASRQ_S3_SOURCE_ALLOW"):
            Settings(home=settings.home, s3_source_allow=bad)


def test_file_sources_never_inside_own_folders(settings, no_dns, tmp_path):
    s = settings.model_copy(update={"allow_file_sources": True, "storage_url": f"file://{tmp_path / 'objects'}",
                                    "home": tmp_path / "home"})
    (tmp_path / "home").mkdir()
    (tmp_path / "objects").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to(tmp_path / "objects")
    for uri in (f"file://{tmp_path}/objects/jobs/1/source/a.wav", f"file://{tmp_path}/home/asrq.db",
                f"file://{tmp_path}/in/../objects/a.wav", f"file://{tmp_path}/in/link/jobs/a.wav"):
        with pytest.raises(BadSource, match="own folders"):
            validate_source_uri(uri, s)
    assert validate_source_uri(f"file://{tmp_path}/in/a.wav", s)


# ---- webhook URLs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "s3://bucket/hook", "file:///etc/passwd", "ftp://93.184.215.14/x", "http://93.184.215.14/hook",
    "https:///nohost", "https://127.0.0.1/hook", "https://10.0.0.1/hook", "https://[::1]/hook",
    "https://93.184.215.14:99999/hook", "https://93.184.215.14/\r\nX: y", "gopher://93.184.215.14/",
])
def test_bad_webhook_urls_rejected(settings, no_dns, url):
    from app.sources import validate_webhook_url

    allowed = settings.model_copy(update={"s3_source_allow": "bucket", "allow_file_sources": True})
    with pytest.raises(BadSource):
        validate_webhook_url(url, allowed)


def test_webhook_urls_accepted(settings, no_dns):
    from app.sources import validate_webhook_url

    assert validate_webhook_url("https://93.184.215.14:8443/hook?t=1", settings)
    lab = settings.model_copy(update={"allow_private_sources": True})
    assert validate_webhook_url("http://127.0.0.1:9000/hook", lab)
    with pytest.raises(BadSource, match="https"):
        validate_webhook_url("s3://bucket/hook", lab)


def test_check_public_host_skipped_when_private_allowed(settings, monkeypatch):
    seen = fake_resolver(monkeypatch, {})
    check_public_host("anything.example.org", 443, settings.model_copy(update={"allow_private_sources": True}))
    assert seen == []


# ---- object keys and LocalStore --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a\x00b", "", "a/..", "..", "a\\b", "a\nb", "x\x7f"])
def test_check_key_refuses(key):
    with pytest.raises(PermanentError):
        check_key(key)


@pytest.mark.parametrize("key", ["a", "jobs/1/source/x.wav", "a..b/c", "日本/語.wav", "a/./b"])
def test_check_key_accepts(key):
    assert check_key(key) == key


def test_local_store_round_trip(tmp_path):
    root = tmp_path / "objects"
    st = LocalStore(root)
    st.ping()
    data = bytes(range(256)) * 40
    st.put_bytes("jobs/j1/audio.s16le", data, "application/octet-stream")
    st.put_stream("jobs/j1/source/in.wav", io.BytesIO(b"RIFF1234"))
    src = tmp_path / "t.txt"
    src.write_text("hello")
    st.put_file("jobs/j1/transcript.txt", src)
    st.put_bytes("jobs/j2/x", b"other job")

    assert st.size("jobs/j1/audio.s16le") == len(data)
    assert st.get_range("jobs/j1/audio.s16le", 0, 10) == data[:10]
    assert st.get_range("jobs/j1/audio.s16le", 1000, 1300) == data[1000:1300]
    assert st.get_range("jobs/j1/audio.s16le", len(data) - 5, len(data) + 100) == data[-5:]
    assert st.get_range("jobs/j1/audio.s16le", 50, 10) == b""
    assert st.get_bytes("jobs/j1/transcript.txt") == b"hello"
    dest = tmp_path / "copy.wav"
    st.download("jobs/j1/source/in.wav", dest)
    assert dest.read_bytes() == b"RIFF1234"
    assert not list(root.rglob(".part-*"))  # write-then-rename leaves no partial files

    # overwrite is atomic and complete
    st.put_bytes("jobs/j1/transcript.txt", b"v2")
    assert st.get_bytes("jobs/j1/transcript.txt") == b"v2"

    assert st.delete_prefix("jobs/j1/") == 3
    for key in ("jobs/j1/audio.s16le", "jobs/j1/transcript.txt"):
        with pytest.raises(ObjectNotFound):
            st.size(key)
        with pytest.raises(ObjectNotFound):
            st.get_range(key, 0, 1)
    with pytest.raises(ObjectNotFound):
        st.download("jobs/j1/source/in.wav", tmp_path / "nope")
    assert st.get_bytes("jobs/j2/x") == b"other job"  # the other job is untouched
    assert st.delete_prefix("jobs/j1/") == 0
    assert st.delete_prefix("jobs/j2/x") == 1  # a single object as prefix
    assert st.presign("jobs/j2/x", 60) is None


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a\x00b", "../../" + "etc/passwd"])
def test_local_store_refuses_escaping_keys(tmp_path, key):
    st = LocalStore(tmp_path / "objects")
    outside = tmp_path / "x"
    with pytest.raises(PermanentError):
        st.put_bytes(key, b"escape")
    with pytest.raises(PermanentError):
        st.get_range(key, 0, 1)
    with pytest.raises(PermanentError):
        st.size(key)
    with pytest.raises(PermanentError):
        st.delete_prefix(key)
    assert not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def test_local_store_ping_fails_when_root_missing(tmp_path):
    st = LocalStore(tmp_path / "objects")
    (tmp_path / "objects").rmdir()
    with pytest.raises(Exception, match="missing"):
        st.ping()


def test_store_from_file_url(settings, tmp_path):
    st = store_from_url(f"file://{tmp_path / 'objs'}", settings)
    assert isinstance(st, LocalStore) and st.root == tmp_path / "objs"
    assert (tmp_path / "objs").is_dir()
