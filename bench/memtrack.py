"""Peak memory of a torch call on CPU, where tracemalloc sees nothing (torch allocates in C++).

``TensorPeak`` is a TorchDispatchMode: every op output whose storage is new (not an alias of an
op input) is counted as live until its storage is freed (a weakref on the storage, so a view
keeps it alive); it records the peak of the live bytes and the largest single allocation.
Tensors that existed before the call (its inputs) are not counted: the figures are what the
call itself allocates (temporaries + output). It sees every tensor an op returns, but not the
scratch buffers a fused C++ kernel allocates and frees internally (e.g. SDPA's per-thread
blocks); ``allocator_peak`` covers those: it reads the CPU allocator's own accounting through
the profiler (``profile_memory=True``), i.e. every byte malloc'd by torch during the call.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """``with TensorPeak() as m: f()`` -> m.peak (bytes), m.largest (bytes), m.largest_numel."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self.largest = 0
        self.largest_numel = 0
        self.largest_op = ""
        self._live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs, func)
        return out

    def _track(self, t: torch.Tensor, inputs: set, func) -> None:
        st = t.untyped_storage()
        key, nbytes = st.data_ptr(), st.nbytes()
        if nbytes == 0 or key in inputs or key in self._live:
            return
        self._live[key] = nbytes
        self._refs[key] = weakref.ref(st, lambda _r, k=key: self._free(k))
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        if nbytes > self.largest:
            self.largest, self.largest_numel, self.largest_op = nbytes, t.numel(), str(func)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)
        self._refs.pop(key, None)


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def tensor_peak(fn) -> TensorPeak:
    """Run ``fn()`` once under a TensorPeak and drop its result; returns the tracker."""
    with TensorPeak() as m:
        result = fn()
        del result
    return m


def measure(fn) -> tuple[TensorPeak, int]:
    """One run of ``fn()`` under both trackers: (TensorPeak, allocator peak bytes)."""
    box: list[TensorPeak] = []
    peak = allocator_peak(lambda: box.append(tensor_peak(fn)))
    return box[0], peak


def allocator_peak(fn) -> int:
    """Peak bytes allocated by torch's CPU allocator while ``fn()`` runs (profiler accounting:
    net allocations since the call started, including kernels' internal scratch buffers)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"].get("Total Allocated", 0) for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0]
    return max(totals, default=0)
