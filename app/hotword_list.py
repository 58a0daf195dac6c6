"""A list of hotwords as clients send it: what one entry may be, how many a job may have, and the text-file
format (UTF-8, one per line) of hotwords_file uploads, `asrq submit --hotwords-file` and ASRQ_HOTWORDS_FILE.
Which models take how many of them is the catalog's business (app/catalog/hotwords.py)."""

from __future__ import annotations

MAX_HOTWORDS = 1000  # per job, after the deployment's default list is merged in (app/jobs.py)
HOTWORD_MAX_CHARS = 64
# a hotwords text file (upload, --hotwords-file, ASRQ_HOTWORDS_FILE): 1,000 lines of 64 CJK characters
# (3 bytes each in UTF-8) fit with room to spare
MAX_HOTWORDS_FILE_BYTES = 256 * 1024


def check_hotword(w: str) -> str:
    w = w.strip()
    if not w or len(w) > HOTWORD_MAX_CHARS or not w.isprintable():
        raise ValueError(f"hotwords must be 1-{HOTWORD_MAX_CHARS} printable characters each; got {w[:80]!r}")
    return w


def parse_hotwords_text(data: bytes, what: str = "hotwords file") -> list[str]:
    """A hotwords text file -> its entries: UTF-8, one per line, blank lines skipped. ValueError says why not."""
    if len(data) > MAX_HOTWORDS_FILE_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes; at most {MAX_HOTWORDS_FILE_BYTES} are accepted")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 text (byte {e.start})") from e
    words = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                words.append(check_hotword(line))
            except ValueError as e:
                raise ValueError(f"{what} line {n}: {e}") from e
    if len(words) > MAX_HOTWORDS:
        raise ValueError(f"{what} has {len(words)} hotwords; at most {MAX_HOTWORDS} are accepted")
    return words
