"""Measuring a solve: wall time and peak tensor memory.

Peak memory is the high-water mark of tensor storage allocated during the call and alive at the same time, beyond
what existed before it (the input `x_T`, the model's constants). On CUDA it is read from the caching allocator's
statistics; on other devices (CPU) it is counted by a `TorchDispatchMode` that sees every tensor operation, adds the
bytes of each newly allocated storage and subtracts them when the last tensor using that storage is freed. It counts
torch tensors only: memory held by numpy (scipy's `solve_ivp` state) or by Python objects is not seen. The counting
costs a few microseconds per operation, so wall time is never measured in the same call.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """Inside `with PeakTensorMemory() as m:`, `m.peak` is the most bytes of tensor storage allocated in the block
    and alive at once; `m.current` what is still alive."""

    def __init__(self):
        super().__init__()
        self.live: dict[tuple, list[int]] = {}  # storage key -> [bytes, tensors referring to it]
        self.current = self.peak = 0

    def _release(self, key: tuple) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            if key[1] == 0:
                continue
            if key in self.live:  # a view of (or in-place result on) storage allocated in the block
                self.live[key][1] += 1
            else:
                if inputs is None:
                    inputs = {
                        (str(a.device), a.untyped_storage().data_ptr())
                        for a in tree_flatten((args, kwargs))[0]
                        if isinstance(a, torch.Tensor) and a.device.type != "meta"
                    }
                if key in inputs:  # a view of, or in-place result on, a tensor from before the block
                    continue
                self.live[key] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """(fn(), peak bytes of tensor memory allocated during the call)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - base
    with PeakTensorMemory() as tracker:
        out = fn()
    return out, tracker.peak


def wall_time(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, float]:
    """(fn(), seconds it took), synchronising the device before and after."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start
