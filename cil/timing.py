"""Wall-clock timing with JAX compile time measured apart (PROTOCOL.md: train/eval/compile seconds).

    with Stopwatch() as sw:
        state = strategy.learn(...)        # block on the result inside the block
    sw.seconds, sw.compile_seconds         # wall time less compiles, and the compiles

Compile time is what JAX itself reports through ``jax.monitoring`` (tracing, lowering to MLIR and
the backend compile) while the block runs.
"""

from __future__ import annotations

import time

import jax

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_total = [0.0]


def _on_duration(event: str, duration: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _compile_total[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds_so_far() -> float:
    return _compile_total[0]


class Stopwatch:
    """Measures a block: ``seconds`` excludes compiling, ``compile_seconds`` is the compiling."""

    def __enter__(self):
        self._wall = time.perf_counter()
        self._compile = compile_seconds_so_far()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        self.compile_seconds = compile_seconds_so_far() - self._compile
        self.seconds = max(wall - self.compile_seconds, 0.0)
        return False
