"""Test set-up: two virtual CPU devices, so every test exercises the data-parallel code path."""

import os
import sys
from pathlib import Path

os.environ.setdefault("CIL_HOST_DEVICES", "2")
os.environ.setdefault("CIL_COMPILATION_CACHE", "")  # run.py in subprocesses: no cache in ~
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cil import parallel  # noqa: E402

parallel.use_host_devices()
