"""Transcribe bookkeeping in bulk (claims, result writes, reads, finalize's writes) and batches sized
for the card, on real Postgres and SQLite; the CUDA sizing path on CPU with the card's figures faked."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from app.db.models import Chunk, ChunkState, Job, JobState
from app.db.session import make_engine
from app.lifecycle import claim_chunks, save_results
from workers.batching import MemoryCost, budget_from_memory, fit_memory_cost, plan_batches
from workers.engines.base import ChunkText, Engine, EngineSpec, probe_audio

# ---- results and claims in bulk, fenced per chunk --------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request, tmp_path):
    from app.db.migrate import upgrade

    if request.param == "postgresql":
        url = request.getfixturevalue("migrated_pg")
    else:
        url = f"sqlite:///{tmp_path / 'asrq.db'}"
        upgrade(url)
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def _job(s: Session, n_chunks: int, options: dict | None = None) -> tuple[uuid.UUID, list[uuid.UUID]]:
    job = Job(tenant="t", state=JobState.TRANSCRIBING, source_uri="upload:x.wav", filename="x.wav",
              options=options or {"engine": "whisper"}, params_hash="0" * 64, chunks_total=n_chunks)
    s.add(job)
    s.flush()
    chunks = [Chunk(job_id=job.id, index=i, start_ms=i * 1000, end_ms=i * 1000 + 900) for i in range(n_chunks)]
    s.add_all(chunks)
    s.commit()
    return job.id, [c.id for c in chunks]


@contextmanager
def _statements(s: Session):
    """The SQL statements sent while inside (an executemany counts once: one call, one round trip)."""
    sent: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        sent.append(" ".join(statement.split()).upper())

    eng = s.get_bind()
    event.listen(eng, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(eng, "before_cursor_execute", record)


def test_bulk_save_drops_a_stale_claim_and_stores_the_live_ones(session):
    s = session
    done_job, done_ids = _job(s, 2)
    mixed_job, mixed_ids = _job(s, 2)
    claimed, _ = claim_chunks(s, done_ids + mixed_ids, lease_s=-1, max_attempts=3)  # leases already over
    by_id = {w.chunk_id: w for w in claimed}
    # another worker takes one chunk over after the lease ran out: the first claim is stale for it only
    (taken,), _ = claim_chunks(s, [mixed_ids[1]], lease_s=60, max_attempts=3)
    results = [(by_id[c], f"words {i}", [[0.0, 0.5, f"w{i}"]], "en") for i, c in enumerate(done_ids + mixed_ids)]
    with _statements(s) as sent:
        finished = save_results(s, None, results)
    assert finished == [done_job]
    chunk_updates = [q for q in sent if q.startswith("UPDATE CHUNKS")]
    assert len(chunk_updates) == 1, sent  # one statement for the whole batch
    rows = {c.id: c for c in s.query(Chunk).populate_existing()}
    for i, cid in enumerate(done_ids + mixed_ids[:1]):
        assert (rows[cid].state, rows[cid].text, rows[cid].words, rows[cid].language) == \
            (ChunkState.DONE, f"words {i}", [[0.0, 0.5, f"w{i}"]], "en")
        assert rows[cid].lease_until is None
    stale = rows[mixed_ids[1]]
    assert (stale.state, stale.claim_id, stale.text) == (ChunkState.RUNNING, taken.claim_id, None)
    jobs = {j.id: j for j in s.query(Job).populate_existing()}
    assert (jobs[done_job].state, jobs[done_job].chunks_done) == (JobState.FINALIZING, 2)
    assert (jobs[mixed_job].state, jobs[mixed_job].chunks_done) == (JobState.TRANSCRIBING, 1)
    # the live claim's result lands; the job completes; a repeat (a redelivered batch) changes nothing
    assert save_results(s, None, [(taken, "late words", [], "en")]) == [mixed_job]
    assert save_results(s, None, [(taken, "again", [], "en")]) == []
    assert s.get(Chunk, mixed_ids[1], populate_existing=True).text == "late words"


def test_bulk_save_with_a_chunk_listed_twice_keeps_the_first(session):
    s = session
    jid, (cid,) = _job(s, 1)
    (w,), _ = claim_chunks(s, [cid], lease_s=60, max_attempts=3)
    assert save_results(s, None, [(w, "first", [], "en"), (w, "second", [], "de")]) == [jid]
    c = s.get(Chunk, cid, populate_existing=True)
    assert (c.text, c.language) == ("first", "en")


def test_bulk_save_of_results_nobody_holds_stores_nothing(session):
    s = session
    jid, cids = _job(s, 3)
    claimed, _ = claim_chunks(s, cids, lease_s=60, max_attempts=3)
    s.execute(update(Chunk).where(Chunk.id.in_(cids)).values(state=ChunkState.FAILED))  # cancelled meanwhile
    s.commit()
    assert save_results(s, None, [(w, "x", [], "en") for w in claimed]) == []
    assert all(c.text is None for c in s.query(Chunk).filter(Chunk.id.in_(cids)).populate_existing())
    assert s.get(Job, jid, populate_existing=True).chunks_done == 0


def test_claim_with_known_options_is_one_statement_and_the_same_work(session):
    s = session
    opts = {"engine": "whisper", "model": "m", "language": "fr"}
    jid, cids = _job(s, 3, opts)
    with _statements(s) as sent:
        claimed, exhausted = claim_chunks(s, cids[:2], lease_s=60, max_attempts=3, options={jid: opts})
    assert not exhausted and len([q for q in sent if q.startswith(("UPDATE", "SELECT"))]) == 1, sent
    plain, _ = claim_chunks(s, cids[2:], lease_s=60, max_attempts=3)  # options read from the jobs table
    for w in claimed + plain:
        c = s.get(Chunk, w.chunk_id, populate_existing=True)
        assert (w.job_id, w.index, w.start_ms, w.end_ms, w.attempts, w.claim_id, w.options) == \
            (jid, c.index, c.start_ms, c.end_ms, 1, c.claim_id, opts)
    # an exhausted chunk still comes back as such
    s.execute(update(Chunk).where(Chunk.id == cids[0]).values(state=ChunkState.PENDING, attempts=3))
    s.commit()
    claimed, exhausted = claim_chunks(s, cids[:1], lease_s=60, max_attempts=3, options={jid: opts})
    assert not claimed and [w.chunk_id for w in exhausted] == cids[:1]


# ---- reads and writes side by side ----------------------------------------------------------------------------


class _SlowStore:
    """A store whose calls meet: each waits until ``together`` calls are under way at once (an event, not a
    clock), so ``most`` says whether they ran side by side whatever the machine's load. Calls made one
    after another would each wait alone; after the first has waited 5 s, none waits any more."""

    def __init__(self, together: int, fail: set[str] = frozenset()) -> None:
        self.together, self.fail = together, fail
        self.active = self.most = 0
        self.alone = False
        self.puts: dict[str, bytes] = {}
        self._met = threading.Condition()

    def _enter(self) -> None:
        with self._met:
            self.active += 1
            self.most = max(self.most, self.active)
            self._met.notify_all()
            if not self._met.wait_for(lambda: self.most >= self.together or self.alone, timeout=5):
                self.alone = True

    def _leave(self) -> None:
        with self._met:
            self.active -= 1

    def get_range(self, key: str, start: int, end: int) -> bytes:
        self._enter()
        try:
            if key in self.fail:
                raise OSError(f"cannot read {key}")
            return np.full((end - start) // 2, 1000, dtype=np.int16).tobytes()
        finally:
            self._leave()

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._enter()
        try:
            if key in self.fail:
                raise OSError(f"cannot write {key}")
            self.puts[key] = data
        finally:
            self._leave()


def _work(n: int):
    from app.lifecycle import ChunkWork

    return [ChunkWork(uuid.uuid4(), uuid.uuid4(), i, 0, 500 + i, 1, {}, uuid.uuid4()) for i in range(n)]


def test_a_batch_is_read_concurrently_and_failures_stay_per_chunk(monkeypatch):
    from app.constants import pcm_key
    from workers.tasks import transcribe

    work = _work(12)
    store = _SlowStore(4, fail={pcm_key(work[5].job_id)})
    monkeypatch.setattr(transcribe, "get_store", lambda: store)
    audios = transcribe._read_all(work)
    assert store.most >= 4 and not store.alone, store.most  # four reads under way at once
    assert isinstance(audios[5], OSError)
    for i, (w, a) in enumerate(zip(work, audios)):
        if i != 5:
            assert isinstance(a, np.ndarray) and len(a) == (w.end_ms - w.start_ms) * 16  # in order


def test_finalize_writes_its_formats_concurrently_and_raises_after_all_finished(monkeypatch):
    from workers.tasks import finalize

    store = _SlowStore(4, fail={"b"})
    monkeypatch.setattr(finalize, "get_store", lambda: store)
    objs = [(k, k.encode(), "text/plain") for k in ("a", "b", "c", "d")]
    with pytest.raises(OSError, match="cannot write b"):
        finalize.put_all(objs)
    assert store.most == 4 and not store.alone  # the four formats' PUTs under way at once
    assert set(store.puts) == {"a", "c", "d"} and store.active == 0  # nothing left running
    store.fail = set()
    finalize.put_all(objs)
    assert set(store.puts) == {"a", "b", "c", "d"}


# ---- batches sized for the card: the pure part ----------------------------------------------------------------

GiB = 2**30


def test_fit_recovers_a_linear_cost_and_never_falls_under_a_probe():
    cost = fit_memory_cost([(120.0, 2 * GiB + 120 * 10e6), (30.0, 2 * GiB + 30 * 10e6)])
    assert cost.per_s == pytest.approx(10e6) and cost.fixed == pytest.approx(2 * GiB)
    noisy = [(30.0, 5e8), (60.0, 8e8), (120.0, 1.9e9)]
    c = fit_memory_cost(noisy)
    assert all(c.fixed + c.per_s * a >= b - 1 for a, b in noisy)
    # no positive slope (an allocator that kept the first probe's blocks): the dearest ratio, nothing fixed
    assert fit_memory_cost([(120.0, 1.2e9), (30.0, 0.0)]).per_s == pytest.approx(1.2e9 / 90)
    assert fit_memory_cost([(120.0, 1.2e9), (30.0, 1.3e9)]) == MemoryCost(per_s=1.3e9 / 30)
    assert fit_memory_cost([(120.0, 1.2e9)]) == MemoryCost(per_s=1e7)
    with pytest.raises(ValueError):
        fit_memory_cost([])


def test_budget_from_free_memory():
    cost = MemoryCost(per_s=50 * 2**20, fixed=1 * GiB)  # 50 MiB per audio-second
    # 80 GiB card, 70 GiB free after the model: 0.8 * 70 GiB - 1 GiB = 55 GiB -> 1126.4 s
    assert budget_from_memory(70 * GiB, cost, 0.8, floor_s=30, cap_s=1920) == pytest.approx(1126.4)
    assert budget_from_memory(70 * GiB, cost, 0.8, floor_s=30, cap_s=600) == 600  # the request limit binds
    assert budget_from_memory(1 * GiB, cost, 0.8, floor_s=30, cap_s=1920) == 30  # one chunk at a time
    assert budget_from_memory(10 * GiB, MemoryCost(per_s=0.0), 0.8, floor_s=30, cap_s=1920) == 1920


def test_plan_with_a_padded_cost_counts_windows_not_seconds():
    lengths = [2.0] * 10 + [19.0]
    batches = plan_batches(lengths, float, budget_s=90, max_items=64, cost_s=lambda d: 30.0)
    assert [len(b) for b in batches] == [3, 3, 3, 2] and batches[0][0] == 19.0  # still longest first
    assert [len(b) for b in plan_batches(lengths, float, budget_s=90, max_items=64)] == [4, 7]


# ---- batches sized for the card: the engine's path, with the card faked -------------------------------------


class _FakeCudaEngine(Engine):
    max_chunk_s = 20.0

    def __init__(self, device: str, measured: tuple[MemoryCost, float] | Exception) -> None:
        self.spec, self.device, self.measured, self.calls = EngineSpec("fake", "m"), device, measured, 0

    def transcribe_batch(self, audios, options):  # noqa: ANN001, ANN201
        return [ChunkText("") for _ in audios]

    def padded_s(self, duration_s: float) -> float:
        return 30.0 if self.device.startswith("cuda") else duration_s

    def measure_memory(self):  # noqa: ANN201
        self.calls += 1
        if isinstance(self.measured, Exception):
            raise self.measured
        return self.measured


def test_engine_budget_on_cpu_is_the_configured_one():
    e = _FakeCudaEngine("cpu", (MemoryCost(1.0), 1e12))
    assert e.batch_budget_s(240.0, 0.8, 64) == 240.0 and e.calls == 0


def test_engine_budget_on_cuda_is_measured_once():
    e = _FakeCudaEngine("cuda", (MemoryCost(per_s=100 * 2**20, fixed=0.0), 40 * GiB))
    budget = e.batch_budget_s(240.0, 0.8, 64)
    assert budget == pytest.approx(0.8 * 40 * 1024 / 100)  # 327.68 s: ten 30 s windows
    assert e.batch_budget_s(240.0, 0.8, 64) == budget and e.calls == 1
    big = _FakeCudaEngine("cuda", (MemoryCost(per_s=1 * 2**20), 130 * GiB))
    assert big.batch_budget_s(240.0, 0.8, 64) == 64 * 30.0  # capped where the request limit binds


def test_engine_budget_keeps_the_configured_one_when_measuring_fails():
    e = _FakeCudaEngine("cuda", RuntimeError("CUDA driver call cuInit failed with error 100"))
    assert e.batch_budget_s(240.0, 0.8, 64) == 240.0
    assert e.batch_budget_s(240.0, 0.8, 64) == 240.0 and e.calls == 1
    assert e.batch_plan(240.0, 0.8, 64)[1](5.0) == 5.0  # chunks counted by length, as before


def test_measured_plan_counts_chunks_as_the_engine_pads_them():
    e = _FakeCudaEngine("cuda", (MemoryCost(per_s=100 * 2**20), 40 * GiB))
    budget, cost = e.batch_plan(240.0, 0.8, 64)
    assert cost(5.0) == 30.0 and budget == pytest.approx(327.68)
    assert _FakeCudaEngine("cpu", (MemoryCost(1.0), 1.0)).batch_plan(240.0, 0.8, 64)[1](5.0) == 5.0


def test_probe_runs_full_length_batches_largest_first():
    e = _FakeCudaEngine("cuda", (MemoryCost(1.0), 1.0))
    seen: list[int] = []

    def peak(run):  # noqa: ANN001, ANN202
        sizes = []
        real = e.transcribe_batch
        e.transcribe_batch = lambda audios, options: sizes.append([len(a) for a in audios]) or real(audios, options)
        try:
            run()
        finally:
            del e.transcribe_batch
        seen.append(len(sizes[0]))
        assert set(sizes[0]) == {int(20.0 * 16000)}
        return 1e9 + len(sizes[0]) * 30 * 1e7

    cost = e.probe_cost(peak)
    assert seen == [4, 1] and cost.per_s == pytest.approx(1e7) and cost.fixed == pytest.approx(1e9)


def test_probe_audio_is_deterministic_speech_like():
    a = probe_audio(2.0, seed=1)
    assert a.dtype == np.float32 and len(a) == 32000 and np.array_equal(a, probe_audio(2.0, seed=1))
    assert 0.01 < float(np.sqrt(np.mean(a**2))) < 0.5


def test_lowest_free_while_sees_the_dip():
    """The dip lasts until the sampler has read it (an event: however late the sampling thread runs, the
    call does not end before it looked), then the level comes back up."""
    from workers.engines.gpu_memory import lowest_free_while

    level = [100]
    seen_low = threading.Event()

    def read() -> int:
        value = level[0]
        if value == 40:
            seen_low.set()
        return value

    def run() -> None:
        level[0] = 40
        assert seen_low.wait(30), "the sampler never read the level during the call"
        level[0] = 90

    assert lowest_free_while(run, read) == 40


def test_mem_get_info_without_cuda_raises_cleanly():
    from workers.engines import gpu_memory

    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    except ImportError:
        pass
    with pytest.raises((OSError, RuntimeError)):
        gpu_memory.mem_get_info(0)


class _FakeAllocator:
    """torch.cuda's memory counters, driven by the audio each probe batch holds (bytes per sample)."""

    def __init__(self, engine, per_sample: float, fixed: float) -> None:  # noqa: ANN001
        self.peak = self.allocated = 1_000_000
        real = engine.transcribe_batch

        def counted(audios, options):  # noqa: ANN001, ANN202
            self.peak = max(self.peak, self.allocated + fixed + per_sample * sum(len(a) for a in audios))
            return real(audios, options)

        engine.transcribe_batch = counted

    def install(self, monkeypatch, torch) -> None:  # noqa: ANN001
        def reset() -> None:
            self.peak = self.allocated

        for name, fn in {"synchronize": lambda *a: None, "reset_peak_memory_stats": lambda *a: reset(),
                         "memory_allocated": lambda *a: self.allocated, "max_memory_allocated": lambda *a: self.peak,
                         "memory_reserved": lambda *a: self.allocated + 512 * 2**20,
                         "mem_get_info": lambda *a: (20 * GiB, 80 * GiB)}.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_funasr_measures_its_cost_through_torch_counters(tmp_path, monkeypatch):
    """The real probe batches through the real (tiny) Paraformer on CPU; only torch.cuda's counters are faked."""
    pytest.importorskip("funasr")
    import torch

    from tests.tiny_paraformer import build_tiny_paraformer
    from workers.engines.funasr_engine import FunASREngine

    engine = FunASREngine(EngineSpec("funasr", str(build_tiny_paraformer(tmp_path / "m"))), device="cpu")
    fake = _FakeAllocator(engine, per_sample=1200.0, fixed=3e8)  # 19.2 MB per audio-second
    fake.install(monkeypatch, torch)
    engine.device = "cuda"  # only the sizing path sees it: probes still run on CPU
    cost, free = engine.measure_memory()
    assert cost.per_s == pytest.approx(1200.0 * 16000) and cost.fixed == pytest.approx(3e8, rel=1e-6)
    assert free == 20 * GiB + 512 * 2**20
    budget = engine.batch_budget_s(240.0, 0.8, 64)
    assert budget == pytest.approx((0.8 * free - 3e8) / (1200.0 * 16000)) and 30 < budget < 64 * 30


class _Obj:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def _bare_whisper(device: str):  # noqa: ANN202
    from workers.engines.whisper_engine import WhisperEngine

    e = WhisperEngine.__new__(WhisperEngine)  # no model loaded: the parts under test are faked
    e.spec, e.device, e.decoders, e._pool = EngineSpec("whisper", "m"), device, 1, None
    return e


def test_whisper_on_cuda_counts_windows_and_measures_by_sampling(monkeypatch):
    from workers.engines import gpu_memory

    assert _bare_whisper("cpu").padded_s(5.0) == 5.0
    e = _bare_whisper("cuda")
    assert e.padded_s(5.0) == e.padded_s(20.0) == 30.0  # every chunk is one 30 s window
    free = [60 * GiB]
    e.model = _Obj(model=_Obj(device_index=[0]))
    sampled_during = threading.Event()

    def read(index: int = 0) -> tuple[int, int]:
        if free[0] < 60 * GiB:
            sampled_during.set()
        return free[0], 80 * GiB

    def batch(audios, language, options, second_pass=True):  # noqa: ANN001, ANN202
        assert not second_pass  # the probe measures the batched pass alone
        # each window needs 200 MiB while the batch runs, 1 GiB of workspace; all of it is given back. The
        # peak lasts until the sampler has read it (an event, not a sleep the sampler may miss under load)
        before = free[0]
        sampled_during.clear()
        free[0] = before - GiB - len(audios) * 200 * 2**20
        assert sampled_during.wait(30), "the sampler never read the card during the batch"
        free[0] = before
        return [ChunkText("") for _ in audios]

    e._decode = batch
    monkeypatch.setattr(gpu_memory, "mem_get_info", read)
    cost, free_bytes = e.measure_memory()
    assert cost.per_s == pytest.approx(200 * 2**20 / 30) and cost.fixed == pytest.approx(GiB)
    assert free_bytes == 60 * GiB
    # (0.8 * 60 GiB - 1 GiB) / (200 MiB per window) = 235 windows; the request limit binds first
    assert e.batch_budget_s(240.0, 0.8, 64) == 64 * 30.0


def test_language_detection_is_one_batched_call(monkeypatch):
    from faster_whisper.feature_extractor import FeatureExtractor

    e = _bare_whisper("cuda")
    calls: list[tuple] = []

    def encode(features):  # noqa: ANN001, ANN202
        calls.append(("encode", features.shape))
        return features

    def detect_language(encoded):  # noqa: ANN001, ANN202
        calls.append(("detect", encoded.shape[0]))
        return [[("<|de|>", 0.9), ("<|en|>", 0.1)] for _ in range(encoded.shape[0])]  # best first

    e.model = _Obj(feature_extractor=FeatureExtractor(), encode=encode, model=_Obj(detect_language=detect_language))
    audios = [probe_audio(3.0, seed=1), np.zeros(0, np.float32), probe_audio(40.0, seed=2)]
    langs = e.detect_languages(audios)
    assert langs == ["de", "en", "de"]
    assert calls == [("encode", (2, 80, 3000)), ("detect", 2)]  # one pass for the batch, empty chunk skipped
    # on CPU (where CTranslate2 loses by batching) each chunk alone, side by side on the decoders,
    # results back in input order
    calls.clear()
    from concurrent.futures import ThreadPoolExecutor

    e.device, e.decoders, e._pool = "cpu", 2, ThreadPoolExecutor(2)
    assert e.detect_languages(audios * 2) == ["de", "en", "de"] * 2
    assert [c for c in calls if c[0] == "detect"] == [("detect", 1)] * 4
    e._pool.shutdown()
    e._pool = None
    assert e.detect_languages(audios) == ["de", "en", "de"]


@pytest.mark.slow
@pytest.mark.parametrize("decoders", [1, 2])
def test_batched_language_detection_equals_faster_whispers_own(decoders):
    from tests.audio_fixtures import load_clip
    from tests.services import AUDIO
    from workers.engines.whisper_engine import WhisperEngine

    names = ["en_jfk_ask_not_11s.flac", "zh_funasr_binhai_6s.wav", "en_sr_one_two_three.wav",
             "zh_aishell1_BAC009S0724W0121.wav"]
    audios = [load_clip(AUDIO / n) for n in names]
    e = WhisperEngine(EngineSpec("whisper", "bundled:base"), "cpu", cpu_threads=2, cpu_decoders=decoders)
    assert e.detect_languages(audios) == [e.model.detect_language(a)[0] for a in audios] == ["en", "zh", "en", "zh"]


def test_whisper_probe_runs_the_real_batched_pass(monkeypatch):
    """The bundled tiny.en on CPU, taken for a CUDA engine by the sizing path only: the probe batches go
    through faster-whisper's batched pipeline (4 windows, then 1), never the sequential second pass."""
    from app.catalog.models import BUNDLED_PREFIX, model_installed
    from workers.engines import gpu_memory
    from workers.engines.whisper_engine import WhisperEngine

    if not model_installed("whisper", BUNDLED_PREFIX + "tiny.en"):
        pytest.skip("bundled tiny.en not installed")
    e = WhisperEngine(EngineSpec("whisper", BUNDLED_PREFIX + "tiny.en"), "cpu", cpu_threads=2, cpu_decoders=1)
    sizes: list[int] = []
    real = e.pipeline.transcribe
    monkeypatch.setattr(e.pipeline, "transcribe",
                        lambda audio, **kw: sizes.append(kw["batch_size"]) or real(audio, **kw))
    monkeypatch.setattr(e, "_decode_alone", lambda *a, **k: pytest.fail("the probe ran the second pass"))
    monkeypatch.setattr(gpu_memory, "mem_get_info", lambda index=0: (30 * GiB, 80 * GiB))
    e.device = "cuda"
    cost, free = e.measure_memory()
    assert sizes == [4, 1] and free == 30 * GiB and cost.per_s > 0 and e.sampling.sampled_chunks == 0


def test_transcribe_plans_each_option_set_with_its_engines_budget(monkeypatch):
    from app.errors import ModelUnavailable
    from app.lifecycle import ChunkWork
    from app.settings import get_settings
    from workers.tasks import transcribe

    def work(n: int, ms: int, model: str) -> list[ChunkWork]:
        return [ChunkWork(uuid.uuid4(), uuid.uuid4(), i, 0, ms, 0, {"engine": "fake", "model": model})
                for i in range(n)]

    engines = transcribe.Engines()
    # measured: 0.8 * 40 GiB at 100 MiB per audio-second = 327 s, each 5 s chunk a 30 s window: 10 a batch
    engines._got[("fake", "gpu")] = _FakeCudaEngine("cuda", (MemoryCost(per_s=100 * 2**20), 40 * GiB))
    engines._got[("fake", "gone")] = ModelUnavailable("model 'gone' is not installed")
    assert [len(b) for b in transcribe._plan(work(25, 5000, "gpu"), engines)] == [10, 10, 5]
    # a model that cannot load: the configured budget (240 s of 5 s chunks = 48, capped by the request limit)
    limit = get_settings().batch_max_requests
    assert [len(b) for b in transcribe._plan(work(50, 5000, "gone"), engines)] == \
        [min(48, limit), 50 - min(48, limit)]
