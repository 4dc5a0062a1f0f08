"""Host devices follow the cores a process may use; compiled programs are kept on disk."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("CIL_HOST_DEVICES", "XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**environment, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_host_devices_follow_the_usable_cores_not_the_machine():
    code = ("import os; os.sched_setaffinity(0, {{{cores}}}); from cil import parallel; "
            "parallel.use_host_devices(); import jax; print(jax.device_count())")
    assert python(code.format(cores="min(os.sched_getaffinity(0))")) == "1"  # pinned to one core
    if len(os.sched_getaffinity(0)) >= 2:
        assert python(code.format(cores="*sorted(os.sched_getaffinity(0))[:2]")) == "2"


def test_a_second_run_loads_its_programs_from_the_compilation_cache(tmp_path):
    code = ("from cil import parallel; parallel.use_compilation_cache(); import jax, jax.numpy as jnp; "
            "from jax import monitoring; hits = []; "
            "monitoring.register_event_listener(lambda e, **k: hits.append(e)); "
            "print(float(jax.jit(lambda x: jnp.sin(x) * 3)(jnp.float32(0.5)))); "
            "print(sum('cache_hits' in e for e in hits))")
    cache = tmp_path / "jax"
    first = python(code, CIL_COMPILATION_CACHE=str(cache)).splitlines()
    assert any(cache.iterdir())  # the program was written
    second = python(code, CIL_COMPILATION_CACHE=str(cache)).splitlines()
    assert first[0] == second[0] and first[1] == "0" and int(second[1]) >= 1
