"""Models by hub name: FunASR's short names (paraformer-zh, ct-punc, ...) and ModelScope / Hugging Face ids
(iic/SenseVoiceSmall) as names of folders under ASRQ_MODELS_DIR, and ``asrq models pull``, the one code path
that downloads (called by the CLI only: the API and the workers never do).

A pulled model lives in ``ASRQ_MODELS_DIR/<hub id with "/" as "--">`` (iic--SenseVoiceSmall) with a small
manifest (asrq-model.json) that lists every name it answers to: the hub id, its last part, and FunASR's
short names for it on that hub. Resolving a name reads the folder only (a few stat calls, one cached read
of the manifests): the API and the workers never reach a hub, a name nobody pulled is simply not installed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.catalog.plugins import engines

log = logging.getLogger("asrq.hub")

MANIFEST = "asrq-model.json"
HUBS = {"ms": "ModelScope", "hf": "Hugging Face"}
DEFAULT_HUB = "ms"  # FunASR's own default (AutoModel(hub="ms"))
# owner/name as both hubs spell them; no "." or ".." segments, so a hub id is always one safe folder name
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,159}$")
SEPARATOR = "--"


class PullError(Exception):
    """`asrq models pull` could not install the model; the message says why and what to try."""


@functools.lru_cache(maxsize=1)
def name_maps() -> dict[str, dict[str, str]]:
    """FunASR's short names -> hub ids, per hub, from FunASR's own table (funasr/download/name_maps_from_hub.py).

    Read as literals from the file, not imported: importing the funasr package takes seconds, and the API
    resolves names on every submission."""
    maps: dict[str, dict[str, str]] = {hub: {} for hub in HUBS}
    spec = importlib.util.find_spec("funasr")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return maps
    path = Path(next(iter(spec.submodule_search_locations))) / "download" / "name_maps_from_hub.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as e:
        log.warning("FunASR's hub name table %s unreadable (%s): only hub ids and folder names resolve", path, e)
        return maps
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            hub = {"name_maps_ms": "ms", "name_maps_hf": "hf"}.get(node.targets[0].id)
            if hub is not None:
                try:
                    maps[hub] = {str(k): str(v) for k, v in ast.literal_eval(node.value).items()}
                except ValueError:
                    pass
    return maps


def folder_name(hub_id: str) -> str:
    """iic/SenseVoiceSmall -> iic--SenseVoiceSmall (one folder, so it also resolves as a plain folder name)."""
    return hub_id.replace("/", SEPARATOR)


def hub_ids(name: str) -> list[tuple[str, str]]:
    """(hub, hub id) pairs a name may mean: FunASR's short name on each hub, or the hub id itself."""
    out: list[tuple[str, str]] = []
    for hub, table in name_maps().items():
        if name in table:
            out.append((hub, table[name]))
    if HUB_ID.match(name):
        out += [(hub, name) for hub in HUBS]
    return list(dict.fromkeys(out))


def is_hub_name(name: str) -> bool:
    """True for names `asrq models pull` knows how to fetch (a FunASR short name or an owner/name hub id)."""
    return bool(hub_ids(name))


def read_manifest(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@functools.lru_cache(maxsize=8)
def _manifest_index(models_dir: str, _mtime_ns: int) -> dict[str, str]:
    """name -> folder name, from every pulled model's manifest. Keyed on the folder's mtime: a pull
    renames its folder into place, which changes it, so a new model is seen at once."""
    index: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(models_dir), key=lambda e: e.name)
    except OSError:
        return index
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        doc = read_manifest(Path(entry.path))
        for name in (doc or {}).get("names", []):
            index.setdefault(str(name), entry.name)
    return index


def resolve(models_dir: Path, name: str) -> Path | None:
    """The folder under ``models_dir`` that ``name`` names: the folder of that name, else the folder a pull
    of that hub id or short name made, else one whose manifest lists the name. None when nothing local
    answers to it. Never touches the network."""
    direct = models_dir / name
    if direct.is_dir():
        return direct
    for _hub, hub_id in hub_ids(name):
        folder = models_dir / folder_name(hub_id)
        if folder.is_dir():
            return folder
    try:
        mtime = models_dir.stat().st_mtime_ns
    except OSError:
        return None
    found = _manifest_index(str(models_dir), mtime).get(name)
    return models_dir / found if found else None


def install_hint(name: str, models_dir: Path | None) -> str:
    """How an operator installs a hub model a job named, for the 422 the job gets."""
    if models_dir is None:
        return (f"set ASRQ_MODELS_DIR and run `asrq models pull {name}` on a machine with network, then "
                "mount that folder on the API and the workers")
    return (f"install it with `asrq models pull {name}` (into {models_dir}) on a machine with network; "
            "workers never download")


def folder_size_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# --- pull: the only download ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pulled:
    folder: Path
    hub: str
    model_id: str
    names: tuple[str, ...]
    size_bytes: int
    already: bool  # it was installed before this call; nothing was downloaded


def _endpoint(hub: str) -> str:
    if hub == "hf":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN") or "https://www.modelscope.cn"


def _download(hub: str, model_id: str, revision: str | None, dest: Path) -> None:
    """The hub clients FunASR downloads with (funasr/download/download_model_from_hub.py), into ``dest``
    itself: FunASR's wrappers write to the per-user hub cache and print, rather than raise, on failure."""
    if hub == "hf":
        from huggingface_hub import snapshot_download

        snapshot_download(model_id, revision=revision, local_dir=dest)
        shutil.rmtree(dest / ".cache", ignore_errors=True)  # the client's bookkeeping, not the model
    else:
        from modelscope.hub.snapshot_download import snapshot_download
        from modelscope.utils.constant import Invoke, ThirdParty

        snapshot_download(model_id, revision=revision or "master", local_dir=str(dest),
                          user_agent={Invoke.KEY: Invoke.PIPELINE, ThirdParty.KEY: "funasr"})


def pull(name: str, models_dir: Path, hub: str = DEFAULT_HUB, revision: str | None = None,
         force: bool = False) -> Pulled:
    """Download the FunASR model ``name`` (short name or hub id) from ``hub`` into ``models_dir`` once.

    The files land in a hidden staging folder that is renamed into place only when the download is
    complete and is a FunASR model folder, so an API or worker never sees half a model."""
    if hub not in HUBS:
        raise PullError(f"unknown hub {hub!r} (hubs: {', '.join(HUBS)})")
    table = name_maps()[hub]
    model_id = table.get(name, name)
    if not HUB_ID.match(model_id):
        known = ", ".join(sorted(table)) or "none (is funasr installed?)"
        raise PullError(f"{name!r} is neither a FunASR short name on {HUBS[hub]} ({known}) nor a hub id "
                        "like iic/SenseVoiceSmall")
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / folder_name(model_id)
    if dest.exists() and not force:
        doc = read_manifest(dest)
        if doc is None:
            raise PullError(f"{dest} exists and was not made by a pull; --force replaces it")
        return Pulled(dest, doc.get("hub", hub), model_id, tuple(doc.get("names", ())), folder_size_bytes(dest), True)
    staging = models_dir / f".pull-{folder_name(model_id)}-{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.monotonic()
        try:
            _download(hub, model_id, revision, staging)
        except Exception as e:  # noqa: BLE001 - every hub client failure becomes one clear message
            raise PullError(f"could not download {model_id} from {HUBS[hub]} at {_endpoint(hub)}: "
                            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                            f" (no network? a mirror is set with "
                            f"{'HF_ENDPOINT' if hub == 'hf' else 'MODELSCOPE_ENDPOINT'})") from e
        funasr = engines().get("funasr")
        if funasr is None or not funasr.looks_like_model(staging):
            found = ", ".join(sorted(p.name for p in staging.iterdir())[:20]) if staging.is_dir() else "nothing"
            raise PullError(f"{model_id} from {HUBS[hub]} is not a FunASR model folder (config.yaml and "
                            f"model.pt expected; got: {found})")
        short = sorted(k for k, v in table.items() if v == model_id)
        names = tuple(dict.fromkeys([model_id, model_id.split("/", 1)[1], *short]))
        size = folder_size_bytes(staging)
        manifest = {"engine": "funasr", "hub": hub, "model_id": model_id, "revision": revision,
                    "names": list(names), "size_bytes": size, "endpoint": _endpoint(hub),
                    "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        old = None
        if dest.exists():
            old = models_dir / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
        staging.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("pulled %s from %s into %s (%d bytes) in %.1f s", model_id, HUBS[hub], dest, size,
                 time.monotonic() - t0)
        return Pulled(dest, hub, model_id, names, size, False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
