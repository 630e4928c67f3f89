"""A pretend Jetson's Python for the ssh tests: `python fake_jetson.py SCRIPT ARGS...` runs SCRIPT as __main__
with the TensorRT 10.3 stand-in importable as `tensorrt` and libcudart answered by FakeCudart (tests/fake_tensorrt.py;
this machine has no GPU). The copy, the remote command, its exit codes and the files brought back are real."""
from __future__ import annotations

import ctypes
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_tensorrt import FakeCudart, fake_tensorrt  # noqa: E402

sys.modules["tensorrt"] = fake_tensorrt("10.3.0.30")
_real_cdll = ctypes.CDLL
ctypes.CDLL = lambda name, *a, **k: FakeCudart() if "cudart" in str(name) else _real_cdll(name, *a, **k)  # type: ignore
script = os.path.abspath(sys.argv[1])
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
