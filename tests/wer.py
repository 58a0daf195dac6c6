"""Word error rate with the normalisation every comparison here uses."""

from __future__ import annotations

import csv
import re
import unicodedata
from functools import lru_cache

import jiwer

from tests.services import AUDIO

_NUMBERS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
            "8": "eight", "9": "nine", "0": "zero"}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"\b(\d)\b", lambda m: _NUMBERS[m.group(1)], text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp)


@lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    with open(AUDIO / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def reference(name: str) -> str:
    return manifest()[name]["reference_transcript"]
