"""Render a Transcript as JSON, SRT, VTT or TXT."""

from __future__ import annotations

import json

from workers.merge import SEGMENT_TAGS, Transcript


def _clock(t: float, sep: str) -> str:
    ms = max(0, int(round(t * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_json(t: Transcript) -> str:
    d = t.to_dict()
    for seg in d["segments"]:
        # a tag is written where a model gave it (language from every engine; emotion and event from
        # SenseVoice), never as null for engines that have no such thing
        for k in SEGMENT_TAGS:
            if seg.get(k) is None:
                seg.pop(k, None)
    return json.dumps(d, ensure_ascii=False, indent=1)


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for n, s in enumerate((s for s in t.segments if s.text), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in t.segments if s.text]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(t: Transcript) -> str:
    return "\n".join(s.text for s in t.segments if s.text) + ("\n" if t.segments else "")


RENDERERS = {"json": to_json, "srt": to_srt, "vtt": to_vtt, "txt": to_txt}
CONTENT_TYPES = {
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}


def render(t: Transcript, fmt: str) -> str:
    return RENDERERS[fmt](t)
