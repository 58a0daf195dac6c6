"""How much memory the card has free, and the most a call used: what sizes a batch for the card.

Torch (FunASR) counts its own allocations exactly (max_memory_allocated). CTranslate2 (Whisper) exposes
no memory figures, so its use is seen from outside: the card's free memory, read through the CUDA
driver API (the process's primary context, which CTranslate2 already made: no second context, no
torch), sampled while a probe batch runs. A sample can miss a short peak, so that figure is a floor;
the share of free memory a batch may use and the halving on out-of-memory cover the difference.

Nothing here runs on a machine without CUDA: the engines call it only when their device is CUDA.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any


class _Driver:
    """The few CUDA driver calls needed, on the primary context of one device (retained once, kept)."""

    def __init__(self, device_index: int) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
        self.ctx = ctypes.c_void_p()
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev), "cuDevicePrimaryCtxRetain")

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"CUDA driver call {what} failed with error {rc}")

    def mem_get_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(self.lib.cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")
        try:
            self._check(self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        finally:
            self.lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        return int(free.value), int(total.value)


_drivers: dict[int, _Driver] = {}
_lock = threading.Lock()


def mem_get_info(device_index: int = 0) -> tuple[int, int]:
    """(free, total) bytes of the CUDA device ``device_index`` of this process's view."""
    torch: Any = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return tuple(torch.cuda.mem_get_info(device_index))  # type: ignore[return-value]
    with _lock:
        if device_index not in _drivers:
            _drivers[device_index] = _Driver(device_index)
        driver = _drivers[device_index]
    return driver.mem_get_info()


def lowest_free_while(fn: Callable[[], object], read_free: Callable[[], int], every_s: float = 0.001) -> int:
    """Run ``fn`` while a thread samples ``read_free`` (free bytes); the lowest value seen, before,
    during or after the call. The call's own exception propagates."""
    low = [read_free()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            low[0] = min(low[0], read_free())
            stop.wait(every_s)

    t = threading.Thread(target=sample, name="asrq-mem-sampler", daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join(timeout=5)
    return min(low[0], read_free())
