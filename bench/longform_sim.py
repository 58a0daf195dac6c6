"""asrq's pipeline on one machine, one stage option changed at a time: the ablation of the longform section.

The same code as a job (workers.vad.speech_segments -> workers.chunking.plan_chunks -> the engine's
transcribe_batch -> workers.merge.absolute_words) without the queue, database and store in between, so a
variant costs only its decoding; a chunk decode is cached by its samples and options, so variants that
cut the same chunks reuse them. Run as a child: ``python -m bench.longform_sim IN OUT``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from bench.corpus import ROOT, WORK, decode16k

SR = 16000
CACHE = WORK / "longform" / "cache"


@dataclass(frozen=True)
class Variant:
    """One pipeline design. Defaults: None (what the product does now, from its settings)."""

    name: str
    max_chunk_s: float | None = None
    pad_ms: int | None = None  # silence kept around speech at a cut
    end_silence_ms: int | None = None  # VAD: silence that ends a speech segment
    overlap_ms: int | None = None  # hard cuts (no pause): overlap resolved by word times
    context_ms: int = 0  # extra audio on both sides of every chunk; the merge keeps each word once, by time
    prompt: bool = False  # the previous chunk's text as the decoder prompt (serialises a job's chunks)
    decoder: str = "product"  # "product" (engine.transcribe_batch), "sequential", "batched", "no-timestamps"
    # a second decode of the chunks this rule flags, prompted with the first pass's text of the chunk before
    # (known once the first pass is done, so a job's chunks still decode side by side): "" none, "all",
    # or conditions joined by "|" on the first pass: "logprob<X" (a segment's mean token logprob),
    # "temp>0" (a fallback temperature was used), "cr>X" (compression ratio), "late>X" (first word
    # starts X s or more after the chunk's start), "empty"
    redecode: str = ""


def _hash(*parts: bytes) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:20]


def segments_for(name: str, pcm: np.ndarray, end_silence_ms: int, window_s: float) -> list[tuple[int, int]]:
    from workers.vad import speech_segments

    key = _hash(pcm.tobytes(), repr((end_silence_ms, window_s)).encode(),
                *[(ROOT / f).read_bytes() for f in ("workers/vad.py", "workers/vad_decide.py")])
    f = CACHE / f"vad-{name}-{key}.json"
    if f.exists():
        return [tuple(s) for s in json.loads(f.read_text())]
    block = int(window_s * SR)
    segs = speech_segments((pcm[i:i + block] for i in range(0, len(pcm), block)), end_silence_ms)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(segs))
    return segs


class Decoder:
    def __init__(self, model: str, beam_size: int) -> None:
        from app.settings import Settings
        from workers.engines.base import DecodeOptions, EngineSpec
        from workers.engines.whisper_engine import WhisperEngine

        s = Settings()
        self.model = model
        self.engine = WhisperEngine(EngineSpec("whisper", model), "cpu", False, s.cpu_threads, None, s.cpu_decoders)
        self.options = DecodeOptions(beam_size=beam_size)
        self.language = None if self.engine.multilingual else "en"
        self.decoded_s = 0.0

    def _key(self, audio: np.ndarray, how: str, prompt: str | None) -> Path:
        code = [(ROOT / f).read_bytes() for f in ("workers/engines/whisper_engine.py", "workers/engines/word_onsets.py")
                if (ROOT / f).exists()]
        return CACHE / "chunks" / f"{_hash(audio.tobytes(), repr((self.model, self.options, how, prompt)).encode(), *code)}.json"

    def run(self, audios: list[np.ndarray], how: str, prompts: list[str | None] | None = None) -> list[dict]:
        """Words (chunk-relative) of each chunk, from the cache or decoded now."""
        prompts = prompts or [None] * len(audios)
        keys = [self._key(a, how, p) for a, p in zip(audios, prompts)]
        todo = [i for i, k in enumerate(keys) if not k.exists()]
        if todo:
            t0 = time.monotonic()
            for i, r in zip(todo, self._decode([audios[i] for i in todo], how, [prompts[i] for i in todo])):
                keys[i].parent.mkdir(parents=True, exist_ok=True)
                keys[i].write_text(json.dumps({"text": r.text, "words": [[w.start_s, w.end_s, w.word] for w in r.words],
                                               "segments": getattr(r, "segments", [])}))
            self.decoded_s += time.monotonic() - t0
        return [json.loads(k.read_text()) for k in keys]

    def _decode(self, audios: list[np.ndarray], how: str, prompts: list[str | None]):
        e = self.engine
        if how == "product":
            return e.transcribe_batch(audios, self.options)
        language = self.language or e.detect_languages(audios[:1])[0]
        if how == "batched":
            return e._decode(audios, language, self.options)
        if how == "sequential":
            return [e._decode_alone(a[: int(e.max_chunk_s * SR)], language, self.options) for a in audios]
        if how in ("prompt", "scored"):  # "scored": the product's decode (same call), with segment scores kept
            return [self._alone(a, language, initial_prompt=p or None) for a, p in zip(audios, prompts)]
        if how == "no-timestamps":  # one text per chunk, as BatchedInferencePipeline decodes its chunks
            return [self._alone(a, language, without_timestamps=True) for a in audios]
        raise ValueError(how)

    def _alone(self, audio: np.ndarray, language: str, **kw: object):
        from workers.engines.base import ChunkText, Word
        from workers.engines.whisper_engine import chunk_seed

        e = self.engine
        with e.sampling.chunk(chunk_seed(audio, language, self.options)):
            segments, _ = e.model.transcribe(audio, language=language, beam_size=self.options.beam_size,
                                             word_timestamps=True, condition_on_previous_text=False,
                                             vad_filter=False, **kw)
            segs = list(segments)
            words = [Word(round(w.start, 3), round(max(w.start, w.end), 3), w.word.strip())
                     for seg in segs for w in (seg.words or [])]
        from workers.engines.whisper_engine import sound_onsets

        r = sound_onsets(audio, ChunkText(text=" ".join(w.word for w in words), words=words, language=language))
        r.segments = [{"avg_logprob": g.avg_logprob, "compression_ratio": g.compression_ratio,  # type: ignore[attr-defined]
                       "no_speech_prob": g.no_speech_prob, "temperature": g.temperature} for g in segs]
        return r


def flagged(rule: str, first: dict) -> bool:
    """Whether a first-pass chunk decode (cached form) meets the re-decode rule."""
    if rule == "all":
        return True
    segs = first.get("segments") or []
    words = first["words"]
    for cond in rule.split("|"):
        if cond == "empty" and not words:
            return True
        if cond == "temp>0" and any((g["temperature"] or 0) > 0 for g in segs):
            return True
        if cond.startswith("logprob<") and any(g["avg_logprob"] < float(cond[8:]) for g in segs):
            return True
        if cond.startswith("cr>") and any(g["compression_ratio"] > float(cond[3:]) for g in segs):
            return True
        if cond.startswith("late>") and words and words[0][0] >= float(cond[5:]):
            return True
    return False


def run_variant(v: Variant, items: list[dict], dec: Decoder) -> dict:
    from app.settings import Settings
    from workers.chunking import ChunkingOptions, plan_chunks
    from workers.engines.base import Word
    from workers.merge import ChunkResult, absolute_words

    s = Settings()
    from app.catalog.plugins import MAX_CHUNK_S

    max_chunk_s = v.max_chunk_s or min(s.max_chunk_s, MAX_CHUNK_S.get("whisper", s.max_chunk_s))
    base = ChunkingOptions()
    opts = ChunkingOptions(max_chunk_ms=int(max_chunk_s * 1000),
                           overlap_ms=v.overlap_ms if v.overlap_ms is not None else int(s.hard_cut_overlap_s * 1000),
                           pad_ms=v.pad_ms if v.pad_ms is not None else base.pad_ms)
    how = "prompt" if v.prompt else v.decoder
    out = {}
    redecoded_s = 0.0
    for it in items:
        pcm = decode16k(Path(it["path"]))
        dur_ms = len(pcm) * 1000 // SR
        segs = segments_for(it["name"], pcm, v.end_silence_ms or s.vad_max_end_silence_ms, s.vad_window_s)
        plans = plan_chunks(segs, dur_ms, opts)
        spans = [(max(0, p.start_ms - v.context_ms), min(dur_ms, p.end_ms + v.context_ms)) for p in plans]
        audios = [pcm[a * SR // 1000: b * SR // 1000] for a, b in spans]
        if how == "prompt":  # one chunk after another: each waits for its predecessor's text
            decoded, prev = [], None
            for a in audios:
                r = dec.run([a], how, [prev])[0]
                decoded.append(r)
                prev = r["text"][-400:] or None
        elif v.redecode:  # first pass as the product decodes; flagged chunks again, prompted
            decoded = dec.run(audios, "scored")
            idx = [i for i in range(1, len(audios)) if flagged(v.redecode, decoded[i])]
            prompts = [decoded[i - 1]["text"][-400:] or None for i in idx]
            for i, r in zip(idx, dec.run([audios[i] for i in idx], "scored", prompts)):
                decoded[i] = r
            redecoded_s += sum(len(audios[i]) / SR for i in idx)
        else:
            decoded = dec.run(audios, how)
        chunks = [ChunkResult(n, a, b, r["text"], [Word(*w) for w in r["words"]])
                  for n, ((a, b), r) in enumerate(zip(spans, decoded))]
        words = absolute_words(chunks, len(pcm) / SR)
        out[it["name"]] = {"words": [[w.start_s, w.end_s, w.word] for w in words], "chunks": [list(x) for x in spans]}
    out["_redecoded_s"] = redecoded_s  # audio decoded a second time, against the whole set's duration
    return out


def main(inp: Path, out: Path) -> None:
    cfg = json.loads(inp.read_text())
    dec = Decoder(cfg["model"], cfg["beam_size"])
    results = {}
    for vd in cfg["variants"]:
        v = Variant(**{f.name: vd[f.name] for f in fields(Variant) if f.name in vd})
        t0 = time.monotonic()
        results[v.name] = {"variant": asdict(v), "items": run_variant(v, cfg["items"], dec),
                           "wall_s": time.monotonic() - t0}
        print(f"variant {v.name}: {time.monotonic() - t0:.0f} s", flush=True)
    out.write_text(json.dumps({"results": results, "decoded_s": dec.decoded_s}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
