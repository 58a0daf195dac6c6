"""faster-whisper (CTranslate2) engine: many chunks of many jobs in one batched forward pass."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from app.catalog import whisper_base
from app.catalog.builtin import WHISPER
from app.catalog.models import BUNDLED_PREFIX, model_location
from workers.batching import MemoryCost
from workers.engines import bundled_base
from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, Engine, EngineOutOfMemory, EngineSpec, Word

if TYPE_CHECKING:
    from app.settings import Settings

# every chunk is one encoder window of this length in Whisper's batched pass
WINDOW_S = 30.0


def load(spec: EngineSpec, folder: Path | None, settings: Settings) -> WhisperEngine:  # noqa: ARG001
    """The whisper plug-in's loader (app/catalog/builtin.py)."""
    return WhisperEngine(spec, settings.device, settings.fp16, settings.cpu_threads, settings.models_dir,
                         settings.cpu_decoders)


def resolve_model_path(model: str, models_dir: Path | None = None) -> str:
    """A bundled model name, a folder, or a folder name under ASRQ_MODELS_DIR. Never a hub download."""
    path = model_location("whisper", model, models_dir)
    if path is None:
        known = ", ".join(WHISPER.bundled()) or "none"
        raise ValueError(f"unknown bundled model {model[len(BUNDLED_PREFIX):]!r} (known: {known})")
    if whisper_base.is_source(path):
        path = bundled_base.joined_folder()  # the two halves, joined once per machine
    if not (path / "model.bin").is_file():
        raise ValueError(f"no CTranslate2 Whisper model at {path} (model.bin missing)")
    return str(path)


class WhisperEngine(Engine):
    max_chunk_s = 30.0
    supports_hotwords = True  # faster-whisper takes hotwords as a decoder prompt

    def __init__(self, spec: EngineSpec, device: str = "cpu", fp16: bool = True, cpu_threads: int = 0,
                 models_dir: Path | None = None, cpu_decoders: int = 0) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.spec = spec
        self.device = device
        on_gpu = device.startswith("cuda")
        compute_type = ("float16" if fp16 else "float32") if on_gpu else "int8"
        self.decoders, threads_each = (1, 0) if on_gpu else cpu_layout(cpu_threads, cpu_decoders)
        path = resolve_model_path(spec.model, models_dir)
        self.model = WhisperModel(
            path,
            device="cuda" if on_gpu else "cpu",
            compute_type=compute_type,
            cpu_threads=threads_each,
            num_workers=self.decoders,  # CTranslate2 replicas on one device share the weights
            local_files_only=True,
        )
        self.sampling = SeededSampling(self.model.model, lambda: _ct2_whisper(path, on_gpu, compute_type, threads_each))
        self.model.model = self.sampling  # every decode, sequential or batched, goes through it
        self._pool = ThreadPoolExecutor(self.decoders, thread_name_prefix="decoder") if self.decoders > 1 else None
        self.pipeline = BatchedInferencePipeline(self.model)
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        self.multilingual = self.model.model.is_multilingual

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        if not audios:
            return []
        language = options.language or ("en" if not self.multilingual else None)
        try:
            if language is None:
                # a batch holds chunks of many jobs: each chunk's language is detected from its own
                # audio and decoded with it, so no job's language is given to another's chunks (the
                # job's language is then the vote of its chunks, at finalize)
                results = self._by_detected_language(audios, options)
            else:
                results = self._decode_language(audios, language, options)
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                raise EngineOutOfMemory(str(e)) from e
            raise
        return [simplified(sound_onsets(a, r)) for a, r in zip(audios, results)]

    def padded_s(self, duration_s: float) -> float:
        # the batched (CUDA) pass encodes every chunk as one full window, whatever its length
        return WINDOW_S if self.device.startswith("cuda") else duration_s

    def measure_memory(self) -> tuple[MemoryCost, float]:
        """CTranslate2 reports no memory figures: the card's free memory is sampled (driver API, this
        process's context) while probe batches run; a short peak the samples miss is what the share of
        free memory left aside and the halving on out-of-memory are for."""
        from workers.engines.gpu_memory import lowest_free_while, mem_get_info

        index = (list(getattr(self.model.model, "device_index", None) or [0]) or [0])[0]

        def free() -> int:
            return mem_get_info(index)[0]

        def peak(run) -> float:  # noqa: ANN001
            before = free()
            return float(before - lowest_free_while(run, free))

        # the batched pass only: the probe's made-up speech must not send chunks to the sequential second
        # pass, whose fallback loads a fresh sampler model (a second copy of the weights, not batch memory)
        cost = self.probe_cost(peak, lambda audios: self._decode(audios, "en", DecodeOptions(), second_pass=False))
        return cost, float(free())

    def detect_languages(self, audios: list[np.ndarray]) -> list[str]:
        """The language of each chunk, as faster-whisper's detect_language finds it (the top language of
        the first 30 s window). On CUDA the whole batch is one encoder pass and one detection call. On
        CPU, CTranslate2 loses by batching here too (measured on 2 cores, Whisper base int8, the 11
        test clips: 24 CPU s batched against 18 one by one, same languages), so each chunk is detected
        alone, the chunks side by side on the parallel decoders. An empty chunk counts as English."""
        from faster_whisper.audio import pad_or_trim

        langs = ["en"] * len(audios)
        idx = [i for i, a in enumerate(audios) if a.size]
        if not idx:
            return langs
        fe = self.model.feature_extractor
        features = [pad_or_trim(fe(audios[i][: fe.n_samples])[..., : fe.nb_max_frames]) for i in idx]
        groups = [idx] if self.device.startswith("cuda") else [[i] for i in idx]
        pos = {i: n for n, i in enumerate(idx)}

        def detect(group: list[int]) -> list[str]:
            stacked = np.stack([features[pos[i]] for i in group]).astype(np.float32)
            results = self.model.model.detect_language(self.model.encode(stacked))
            return [res[0][0][2:-2] for res in results]  # "<|en|>" -> "en"; best first

        found = self._pool.map(detect, groups) if self._pool is not None and len(groups) > 1 else map(detect, groups)
        for group, group_langs in zip(groups, list(found)):
            for i, lang in zip(group, group_langs):
                langs[i] = lang
        return langs

    def _by_detected_language(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        langs = self.detect_languages(audios)
        out: list[ChunkText | None] = [None] * len(audios)
        for lang in sorted(set(langs)):
            idx = [i for i, lg in enumerate(langs) if lg == lang]
            for i, res in zip(idx, self._decode_language([audios[i] for i in idx], lang, options)):
                out[i] = res
        return [r for r in out if r is not None]

    def _decode_language(self, audios: list[np.ndarray], language: str, options: DecodeOptions) -> list[ChunkText]:
        if self.device.startswith("cuda"):
            return self._decode(audios, language, options)
        # On CPU, CTranslate2 gains nothing from batching (measured on 2 cores, tiny.en int8: 16 chunks
        # take 16.8 s batched, 13.8 s one by one; the encoder, which always sees a full 30 s window, is
        # ~60 % of it) but a lot from decoding whole chunks side by side (see Settings.cpu_decoders).
        # The sequential decoder also seeks and falls back, so no second pass is needed. The worker
        # still batches the scheduling and the I/O.
        return self._decode_each(audios, language, options)

    def _decode(self, audios: list[np.ndarray], language: str, options: DecodeOptions,
                second_pass: bool = True) -> list[ChunkText]:
        # The batched pipeline takes one array and clip boundaries: lay the chunks end to end and
        # pass each as a clip; every output segment's `seek` names the clip it came from.
        lengths = [min(len(a), int(self.max_chunk_s * SAMPLE_RATE)) for a in audios]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        joined = np.concatenate([a[:n] for a, n in zip(audios, lengths)]).astype(np.float32)
        clips = [
            {"start": offsets[i] / SAMPLE_RATE, "end": offsets[i + 1] / SAMPLE_RATE}
            for i in range(len(audios))
            if lengths[i] >= SAMPLE_RATE // 10
        ]
        results = [ChunkText(text="", words=[], language=language) for _ in audios]
        if not clips:
            return results
        starts_s = offsets[:-1] / SAMPLE_RATE
        segments, _info = self.pipeline.transcribe(
            joined,
            language=language,
            clip_timestamps=clips,
            batch_size=len(clips),
            beam_size=options.beam_size,
            word_timestamps=True,
            without_timestamps=True,
            hotwords=" ".join(options.hotwords) or None,
            log_progress=False,
        )
        fps = self.model.frames_per_second
        texts: list[list[str]] = [[] for _ in audios]
        for seg in list(segments):  # consume here: a lazy generator must not outlive this call's errors
            i = int(np.argmin(np.abs(starts_s - seg.seek / fps)))  # seek is the clip start, in frames
            offset_s = offsets[i] / SAMPLE_RATE
            texts[i].append(seg.text.strip())
            for w in seg.words or []:
                start = max(0.0, w.start - offset_s)
                end = max(start, w.end - offset_s)
                results[i].words.append(Word(round(start, 3), round(end, 3), w.word.strip()))
        for i, parts in enumerate(texts):
            results[i].text = " ".join(p for p in parts if p)
        for i in range(len(audios)):
            if second_pass and lengths[i] >= SAMPLE_RATE and has_uncovered_speech(results[i], lengths[i] / SAMPLE_RATE):
                second = self._decode_alone(audios[i][: lengths[i]], language, options)
                if len(second.words) > len(results[i].words):
                    results[i] = second
        return results

    def _decode_each(self, audios: list[np.ndarray], language: str, options: DecodeOptions) -> list[ChunkText]:
        clipped = [a[: int(self.max_chunk_s * SAMPLE_RATE)] for a in audios]
        if self._pool is None or len(clipped) == 1:
            return [self._decode_alone(a, language, options) for a in clipped]
        # list(): every chunk's result (or its exception) is collected inside this call
        return list(self._pool.map(lambda a: self._decode_alone(a, language, options), clipped))

    def _decode_alone(self, audio: np.ndarray, language: str, options: DecodeOptions) -> ChunkText:
        """Whisper's sequential decoder on one chunk: it seeks past where a window stopped and falls back
        to higher temperatures on repetitive or unlikely output, which the one-shot batched pass cannot."""
        with self.sampling.chunk(chunk_seed(audio, language, options)):
            segments, _info = self.model.transcribe(
                audio, language=language, beam_size=options.beam_size, word_timestamps=True,
                condition_on_previous_text=False, vad_filter=False, hotwords=" ".join(options.hotwords) or None,
            )
            # consumed inside the scope: the lazy generator is what decodes (and may sample)
            words = [Word(round(w.start, 3), round(max(w.start, w.end), 3), w.word.strip())
                     for seg in list(segments) for w in (seg.words or [])]
        return ChunkText(text=" ".join(w.word for w in words), words=words, language=language)


def sound_onsets(audio: np.ndarray, result: ChunkText) -> ChunkText:
    """Each word that follows a pause starts where the sound does (workers/engines/word_onsets.py): Whisper's
    attention-based word times put it anywhere in the pause before it or a few hundred ms late, and a
    subtitle or a search hit should start when the speaker does (bench/ABLATION-longform.md)."""
    from workers.engines.word_onsets import refine_starts

    if not result.words:
        return result
    return replace(result, words=refine_starts(audio, result.words))


def simplified(result: ChunkText) -> ChunkText:
    """Chinese in simplified characters, whichever script the model wrote (workers/engines/chinese_script.py).
    Done here, per chunk, where each chunk's language is known and before the result is stored, so chunk
    rows, merge and every format agree; FunASR's Chinese models write simplified already."""
    if result.language != "zh":
        return result
    from workers.engines.chinese_script import simplify_chunk

    return simplify_chunk(result)


def _ct2_whisper(path: str, on_gpu: bool, compute_type: str, threads: int) -> Any:
    import ctranslate2

    return ctranslate2.models.Whisper(path, device="cuda" if on_gpu else "cpu", compute_type=compute_type,
                                      intra_threads=threads, inter_threads=1)


def chunk_seed(audio: np.ndarray, language: str | None, options: DecodeOptions) -> int:
    """A seed that is a function of the chunk's samples and its decode options only."""
    return _seed(np.ascontiguousarray(audio, dtype=np.float32).tobytes(),
                 repr((language, options.beam_size, tuple(options.hotwords))).encode())


def _seed(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p)
    # CTranslate2 reads 0xFFFFFFFF as "no seed" (a random one per thread)
    return int.from_bytes(h.digest(), "little") % 0xFFFFFFFF


# CTranslate2's seed is one process-wide value (ctranslate2.set_random_seed), but each of its worker
# threads owns a random generator (a thread_local std::mt19937 on CPU, thread_local curand states on
# CUDA) that reads the seed once, at that thread's first draw, and then only advances. A model's
# worker threads live as long as the model, so a sampled decode on them depends on every draw that
# thread made before (which chunks ran, in which order, on which replica): setting the seed again
# changes nothing (tried with CTranslate2 4.8.5 and tiny.en). Sampling happens only at faster-whisper's
# fallback temperatures (beam search and greedy draw nothing), so those decodes go to a fresh
# single-thread CTranslate2 model per chunk, whose generator is seeded from the chunk and nothing
# else. A fresh model costs one load (tiny.en on one CPU thread: 0.2-0.5 s, against 10-20 s for the
# fallback decode it serves); chunks that need no fallback never pay it.
_SEED_LOCK = threading.Lock()  # the seed is global: set it and make the draw that reads it, together


class _Scope:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.sampler: Any = None


class SeededSampling:
    """Stands in for the CTranslate2 Whisper model: everything passes through, except sampled
    generate() calls, which draw from a generator seeded by the chunk being decoded."""

    def __init__(self, model: Any, new_sampler: Callable[[], Any]) -> None:
        self._model = model
        self._new_sampler = new_sampler
        self._local = threading.local()
        self.sampled_chunks = 0  # chunks that needed a sampled (fallback) decode, for tests and logs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def chunk(self, seed: int) -> "_ChunkScope":
        """Within this scope (one chunk's decode, on the calling thread) sampling is seeded by ``seed``."""
        return _ChunkScope(self, seed)

    def generate(self, features: Any, prompts: Any, **kwargs: Any) -> Any:
        if kwargs.get("sampling_topk", 1) == 1:  # greedy or beam search: no random draw
            return self._model.generate(features, prompts, **kwargs)
        scope = getattr(self._local, "scope", None)
        if scope is None:  # a sampled call outside any chunk: a one-off generator seeded by the call
            scope = _Scope(_seed(repr((prompts, sorted(kwargs.items()))).encode()))
        return self._sample(scope, features, prompts, kwargs)

    def _sample(self, scope: _Scope, features: Any, prompts: Any, kwargs: dict) -> Any:
        first = scope.sampler is None
        if first:
            scope.sampler = self._new_sampler()  # loading draws nothing; the first generate does
        if first or scope.sampler.device == "cuda":
            # CUDA re-creates (and re-seeds from the global seed) its states when a call needs more
            # of them than the thread holds, so on GPU every sampled call sets the seed again
            import ctranslate2

            with _SEED_LOCK:
                self.sampled_chunks += first
                ctranslate2.set_random_seed(scope.seed)
                return scope.sampler.generate(features, prompts, **kwargs)
        return scope.sampler.generate(features, prompts, **kwargs)


class _ChunkScope:
    def __init__(self, owner: SeededSampling, seed: int) -> None:
        self._owner = owner
        self._seed = seed
        self._outer: _Scope | None = None

    def __enter__(self) -> None:
        self._outer = getattr(self._owner._local, "scope", None)
        self._owner._local.scope = _Scope(self._seed)

    def __exit__(self, *exc: object) -> None:
        self._owner._local.scope = self._outer  # drops the chunk's sampler (and its weights)


def cpu_layout(threads: int = 0, decoders: int = 0) -> tuple[int, int]:
    """(decoders, threads per decoder) for CPU inference: ``threads`` in all (0: every core this process
    may use), split over ``decoders`` parallel decoders (0: one per thread)."""
    total = threads or len(os.sched_getaffinity(0))
    n = max(1, min(decoders or total, total))
    return n, max(1, total // n)


# A batched pass decodes each chunk in one go and keeps what the model wrote before it stopped; tiny
# models stop early on chunks holding several voices and drop whole sentences (measured on the
# long-form test recordings). Speech the words do not cover is the sign of it.
UNCOVERED_EDGE_S = 1.5
UNCOVERED_GAP_S = 2.0


def has_uncovered_speech(result: ChunkText, duration_s: float) -> bool:
    """True when the words leave a stretch of the chunk unexplained (chunks are cut to speech, so a
    long wordless stretch at an edge, or a long gap inside, usually means words were dropped)."""
    w = result.words
    if not w:
        return duration_s > 2.0
    if w[0].start_s > UNCOVERED_EDGE_S or duration_s - w[-1].end_s > UNCOVERED_EDGE_S:
        return True
    return any(b.start_s - a.end_s > UNCOVERED_GAP_S for a, b in zip(w, w[1:]))
