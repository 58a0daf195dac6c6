"""FunASR backend: Paraformer (plain, BiCif, SeACo, contextual) and SenseVoice from a local model folder."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from workers.batching import MemoryCost
from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, Engine, EngineOutOfMemory, EngineSpec, Word

if TYPE_CHECKING:
    from app.settings import Settings

_HOTWORD_MODELS = {"SeacoParaformer", "ContextualParaformer"}
_SENSEVOICE_LANGUAGES = {"auto", "zh", "en", "yue", "ja", "ko"}
_TAG = re.compile(r"<\|([^|]*)\|>")
# SenseVoice's emotion and audio-event tags -> the names the transcript uses; *_UNK: it does not know
_EMOTIONS = {t: t.lower() for t in ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED")}
_EMOTIONS |= {"EMO_UNKNOWN": None}
_EVENTS = {t: t.lower() for t in ("Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough")}
_EVENTS |= {"Event_UNK": None}
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])")
# The fbank frontend needs one full 25 ms window; shorter input makes kaldi-native-fbank raise
# and takes the whole batch down with it.
_MIN_SAMPLES = SAMPLE_RATE * 25 // 1000


def _is_cjk(s: str) -> bool:
    return bool(s) and all(_CJK_CHAR.match(c) for c in s)


def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c).startswith("P") for c in s)


def load(spec: EngineSpec, folder: Path | None, settings: Settings) -> FunASREngine:
    """The funasr plug-in's loader (app/catalog/builtin.py): FunASR loads from the model's folder."""
    return FunASREngine(EngineSpec(spec.engine, str(folder)), settings.device, settings.fp16)


class FunASREngine(Engine):
    def __init__(self, spec: EngineSpec, device: str = "cpu", fp16: bool = False):
        # FunASR treats any non-folder as a hub name and would try to download it.
        if not os.path.isdir(spec.model):
            raise FileNotFoundError(f"FunASR model folder not found: {spec.model}")
        from funasr import AutoModel  # importing funasr takes seconds; only workers that use it pay

        self.spec = spec
        self._auto = AutoModel(
            model=spec.model,
            device=device,
            disable_update=True,
            disable_pbar=True,
            log_level="ERROR",
            # AutoModel otherwise resets torch to 4 threads on every call.
            ncpu=torch.get_num_threads(),
            # WavFrontend defaults to dither=1.0: random noise on every decode would make a retried
            # chunk (or the same chunk in another batch) come back with other text. Set at build time:
            # AutoModel restores a deep copy of its load-time frontend before every generate(), so an
            # attribute set on the frontend afterwards is lost from the first call on.
            frontend_conf={"dither": 0.0},
        )
        self.device = self._auto.kwargs["device"]  # AutoModel falls back to CPU without CUDA
        if fp16 and self.device.startswith("cuda"):
            _autocast_blocks(self._auto.model, "cuda", torch.float16)

        name = type(self._auto.model).__name__
        self._sensevoice = name.startswith("SenseVoice")
        self.supports_hotwords = name in _HOTWORD_MODELS
        self.char_level = self._vocab_is_chinese()
        # FunASR's own pipelines feed these models VAD segments of at most 30 s.
        self.max_chunk_s = 30.0

    def _vocab_is_chinese(self) -> bool:
        vocab = self._auto.kwargs.get("token_list")
        if isinstance(vocab, dict):
            vocab = list(vocab)
        sp = getattr(self._auto.kwargs.get("tokenizer"), "sp", None)
        if not vocab and sp is not None:
            vocab = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
        pieces = [t.replace("▁", "").replace("@@", "") for t in vocab or []]
        pieces = [p for p in pieces if p and not p.startswith("<")]
        return bool(pieces) and sum(map(_is_cjk, pieces)) / len(pieces) >= 0.5

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        out = [ChunkText(text="", words=[], language=options.language) for _ in audios]
        todo = [i for i, a in enumerate(audios) if len(a) >= _MIN_SAMPLES]
        if not todo:
            return out
        batch = [np.ascontiguousarray(audios[i], dtype=np.float32) for i in todo]
        for i, res in zip(todo, self._generate(batch, options)):
            out[i] = _chunk_from_result(res, len(audios[i]) / SAMPLE_RATE, options.language)
        return out

    def measure_memory(self) -> tuple[MemoryCost, float]:
        """Torch counts its allocations: the peak a probe batch added is exact, not sampled. Free memory
        for batches is what the card has free plus what torch's cache holds unused."""
        def peak(run) -> float:  # noqa: ANN001
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated() - base)

        cost = self.probe_cost(peak)
        free, _total = torch.cuda.mem_get_info()
        return cost, float(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())

    def _generate(self, batch: list[np.ndarray], options: DecodeOptions) -> list[dict]:
        kwargs: dict = {"batch_size": len(batch), "fs": SAMPLE_RATE}
        if self.supports_hotwords and options.hotwords:
            # FunASR splits this string on whitespace, so a multi-word phrase becomes several hotwords.
            # Padded with spaces: FunASR reads a string starting with "http" as a URL to download, and one
            # naming an existing .txt as a file to read (a client's hotwords must never reach either);
            # padding leaves the words themselves unchanged (it strips them) and sends them down neither path.
            kwargs["hotword"] = f" {' '.join(options.hotwords)} "
        if self._sensevoice:
            lang = options.language if options.language in _SENSEVOICE_LANGUAGES else "auto"
            # use_itn: numerals and punctuation written out by the model itself, unless the job said no;
            # output_timestamp: token times from FunASR's CTC alignment of the decoded text
            kwargs.update(language=lang, use_itn=options.itn is not False, output_timestamp=True)
        oom = None
        try:
            res = self._auto.generate(batch, **kwargs)
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if not (isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()):
                raise
            oom = str(e)
        if oom is not None:
            # Raised outside the except block so the traceback no longer pins the failed
            # batch's tensors when the caller retries with half the batch.
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineOutOfMemory(oom)
        if len(res) != len(batch):
            # Paraformer returns one placeholder (or nothing) when no input in the batch fires
            # a single token; decoding alone keeps results lined up in every other case.
            if len(batch) == 1:
                return [{}]
            return [self._generate([a], options)[0] for a in batch]
        return res


def _chunk_from_result(res: dict, duration: float, language: str | None) -> ChunkText:
    """One FunASR result dict -> ChunkText. SenseVoice's rich tags (<|zh|><|NEUTRAL|><|Speech|><|woitn|>)
    become fields, never text: its language tag overrides the hint, emotion and event are kept."""
    raw = str(res.get("text", ""))
    tags = _TAG.findall(raw)
    language = next((t for t in tags if t in _SENSEVOICE_LANGUAGES - {"auto"}), language)
    emotion = next((_EMOTIONS[t] for t in tags if _EMOTIONS.get(t)), None)
    event = next((_EVENTS[t] for t in tags if _EVENTS.get(t)), None)
    spaced = _TAG.sub("", raw).strip()
    text = _SPACE_BETWEEN_CJK.sub("", spaced)
    if not text:
        return ChunkText(text="", words=[], language=language, emotion=emotion, event=event)
    # Paraformer's text is already split into stamped units ("字 字 word"); SenseVoice lists them.
    units, stamps = res.get("words") or spaced.split(), res.get("timestamp") or []
    if len(units) == len(stamps):
        # SenseVoice aligns every token after the first four; a tag it wrote elsewhere is no word
        kept = [(u, t) for u, t in zip(units, stamps) if not _TAG.fullmatch(str(u).strip())]
        units, stamps = [u for u, _ in kept], [t for _, t in kept]
    units = [u for u in units if not _TAG.fullmatch(str(u).strip())]
    return ChunkText(text=text, words=_words(units, stamps, duration), language=language, emotion=emotion,
                     event=event)


def _autocast_blocks(model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Run the encoder/decoder stacks under autocast and hand fp32 back to the rest.

    Weights stay fp32: AutoModel's fp16 (model.half()) meets the frontend's fp32 features with a
    dtype error, and autocast over the whole model runs the CIF integrate-and-fire sums in low
    precision, which misses fires and crashes FunASR's timestamp code.
    """

    def to_fp32(x):
        if isinstance(x, torch.Tensor):
            return x.float() if x.is_floating_point() else x
        if isinstance(x, (tuple, list)):
            return type(x)(to_fp32(v) for v in x)
        return x

    for name in ("encoder", "decoder", "seaco_decoder"):
        block = getattr(model, name, None)
        if block is None:
            continue

        def forward(*args, _forward=block.forward, **kwargs):
            with torch.autocast(device_type, dtype=dtype):
                return to_fp32(_forward(*args, **kwargs))

        block.forward = forward


def _words(units: list[str], stamps: list, duration: float) -> list[Word]:
    """Pair text units with FunASR's [start_ms, end_ms] stamps; one Word per CJK character."""
    units = [u.replace("▁", "").strip() for u in units]
    units = [u for u in units if u]
    spans = [(s / 1000.0, e / 1000.0) for s, e in (t[:2] for t in stamps)]
    if len(spans) != len(units):
        # Counts differ when FunASR drops <unk> from the text but not from the stamps, merges
        # abbreviations, or gives no stamps at all: spread the units evenly instead.
        lo, hi = (spans[0][0], spans[-1][1]) if spans else (0.0, duration)
        step = (hi - lo) / max(len(units), 1)
        spans = [(lo + k * step, lo + (k + 1) * step) for k in range(len(units))]

    words: list[Word] = []
    prev_end = 0.0
    for unit, (start, end) in zip(units, spans):
        # LFR padding lets the last stamp run up to one 60 ms frame past the audio.
        start = min(max(start, prev_end), duration)
        end = min(max(end, start), duration)
        if _is_punct(unit) and words:
            # Attach punctuation to the word before it, as Whisper's word timestamps do.
            last = words.pop()
            words.append(Word(last.start_s, max(last.end_s, end), last.word + unit))
        elif _is_cjk(unit) and len(unit) > 1:
            step = (end - start) / len(unit)
            words += [Word(start + k * step, start + (k + 1) * step, c) for k, c in enumerate(unit)]
        else:
            words.append(Word(start, end, unit))
        prev_end = end
    return words
