"""asrq benchmark harness: `python -m bench.run [--quick]` (see bench/run.py).

Three measurements on one corpus, the same cores and the same model:
engine limit (the engine alone, batched), naive loop (one file at a time), and asrq (the real stack),
plus the service-level checks (enqueue, GET latency, prepare memory, time to first chunk).
"""
