"""Run and time an edgec TVM build with nothing but the TVM runtime and numpy.

    python -m edgec.device.tvm_runner OUT [--runs 100] [--warmup 10] [--inputs x.npz] [--save-outputs y.npz] [--no-kernels]

OUT is an edgec output folder (model.so + manifest.json). Prints one JSON object: latency (mean, p50, p90,
p99, min, max, std in ms over `runs` timed runs after `warmup` untimed ones), per-kernel times, and the
output shapes. The TVM backend's runner() and profile() use this same code, and the build copies this file
into OUT as `edgec_runtime.py`, so `python OUT/edgec_runtime.py OUT` works on a board where only the TVM
runtime and numpy are installed.

This module imports only the standard library, numpy and (inside functions) tvm: keep it that way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MODEL_FILE = "model.so"
_ELF_MACHINES = {183: "aarch64", 62: "x86_64", 40: "arm", 243: "riscv"}
_HOST_MACHINE = {"arm64": "aarch64", "AMD64": "x86_64", "armv7l": "arm", "riscv64": "riscv"}


class WrongMachine(ValueError):
    """model.so was built for another CPU architecture than this machine's."""


def elf_machine(path: str | os.PathLike) -> str:
    """The architecture in an ELF file's header: 'aarch64', 'x86_64', ... (or the raw number)."""
    with open(path, "rb") as f:
        data = f.read(20)
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return "not an ELF file"
    machine = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, str(machine))
_NO_OP = 0  # tvm.runtime.vm.VMInstrumentReturnKind.NO_OP


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(len(cores), 1)


def _default_threads() -> None:
    """One TVM worker per physical core, unless TVM_NUM_THREADS/OMP_NUM_THREADS say otherwise.

    TVM's own default on x86 is half the logical CPUs (it assumes 2-way SMT): 1 thread on a 2-core VM
    without SMT. The thread pool reads this when it starts, at the first parallel kernel.
    """
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


class Session:
    """A loaded model.so on one CPU: run(feeds) -> outputs, time(), time_kernels()."""

    def __init__(self, out_dir: str | os.PathLike, spec: dict[str, Any] | None = None):
        _default_threads()
        import tvm
        from tvm.runtime import vm as tvm_vm

        self.out_dir = Path(out_dir)
        self.spec = spec if spec is not None else read_spec(self.out_dir)
        path = self.out_dir / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: is '{self.out_dir}' a TVM build from edgec compile?")
        built_for, here = elf_machine(path), _HOST_MACHINE.get(platform.machine(), platform.machine())
        if built_for != here:
            raise WrongMachine(f"{path} is a library for {built_for}; this machine is {here}. Run it on the board "
                               f"it was built for (copy the folder there: python {self.out_dir.name}/edgec_runtime.py "
                               f"{self.out_dir.name}).")
        self._tvm = tvm
        self.device = tvm.cpu(0)
        self.lib = tvm.runtime.load_module(str(path))
        self.vm = tvm_vm.VirtualMachine(self.lib, self.device)
        self._main = self.vm["main"]
        self.input_names = [s["name"] for s in self.spec["inputs"]]

    # ------------------------------------------------------------------------------------------ running
    def to_device(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"no array for input(s) {missing}; the model wants {self.input_names}")
        return [self._tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), self.device) for n in self.input_names]

    def run_device(self, args: Sequence[Any]) -> Any:
        return self._main(*args)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return flatten_outputs(self.run_device(self.to_device(feeds)))

    # ------------------------------------------------------------------------------------------- timing
    def time(self, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> list[float]:
        """Milliseconds per run (inputs already on the device, outputs left there)."""
        args = self.to_device(feeds)
        return time_runs(lambda: self._main(*args), runs, warmup)

    def time_kernels(self, feeds: dict[str, np.ndarray], runs: int, warmup: int = 1) -> list[dict[str, Any]]:
        """Mean time per kernel call site: time_call_sites() on this session's VM."""
        return time_call_sites(self.vm, self._main, self.to_device(feeds), runs, warmup)


def time_call_sites(vm: Any, main: Any, args: Sequence[Any], runs: int, warmup: int = 1) -> list[dict[str, Any]]:
    """Mean time per kernel call site of `main(*args)` on `vm`, in execution order, timed around each call by
    a VM instrument (the board server calls this too, on the board).

    A kernel called from several places is reported once per call site as `symbol#k` (k counts from 0);
    a kernel called once keeps its plain symbol. VM builtins (allocation, reshape views) are not listed.
    """
    sites: dict[str, list[float]] = {}
    order: list[str] = []
    state: dict[str, Any] = {"seen": {}, "t0": 0.0, "record": False}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *call_args: Any) -> int:
        if symbol.startswith("vm."):
            return _NO_OP
        if before:
            state["t0"] = time.perf_counter()
            return _NO_OP
        elapsed = (time.perf_counter() - state["t0"]) * 1000.0
        k = state["seen"].get(symbol, 0)
        state["seen"][symbol] = k + 1
        if state["record"]:
            name = f"{symbol}#{k}"
            if name not in sites:
                sites[name] = []
                order.append(name)
            sites[name].append(elapsed)
        return _NO_OP

    vm.set_instrument(instrument)
    try:
        for i in range(warmup + runs):
            state["seen"] = {}
            state["record"] = i >= warmup
            main(*args)
    finally:
        vm.set_instrument(_null_instrument)
    calls: dict[str, int] = {}
    for name in order:
        symbol = name.rsplit("#", 1)[0]
        calls[symbol] = calls.get(symbol, 0) + 1
    rows = []
    for name in order:
        symbol = name.rsplit("#", 1)[0]
        rows.append({"kernel": symbol if calls[symbol] == 1 else name, "symbol": symbol,
                     "time_ms": round(float(np.mean(sites[name])), 5), "samples": len(sites[name])})
    return rows


def _null_instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
    return _NO_OP


def flatten_outputs(value: Any) -> list[np.ndarray]:
    """A VM result (a tensor or nested tuples of them) as a flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out: list[np.ndarray] = []
    for item in value:
        out.extend(flatten_outputs(item))
    return out


def time_runs(call: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of `runs` calls, after `warmup` untimed ones: every latency edgec reports."""
    for _ in range(int(warmup)):
        call()
    samples = []
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


# ---------------------------------------------------------------------------------------------- inputs
def read_spec(out_dir: Path) -> dict[str, Any]:
    """Inputs/outputs (name, shape, dtype) from OUT/manifest.json."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: '{out_dir}' is not an edgec output folder")
    manifest = json.loads(path.read_text())
    return {"inputs": manifest["inputs"], "outputs": manifest["outputs"],
            "target": manifest.get("target", {}).get("name"), "precision": manifest.get("precision")}


def seeded_feeds(inputs: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [0, 1) floats (zeros for integer inputs), seeded: the same inputs on every machine."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in inputs:
        shape = [int(d) for d in s["shape"]]
        feeds[s["name"]] = (rng.random(shape) if s["dtype"].startswith("float") else np.zeros(shape)).astype(s["dtype"])
    return feeds


def npz_feeds(path: str | os.PathLike, inputs: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Arrays named after the inputs; a leading batch larger than the model's is cut to the model's."""
    data = np.load(path)
    feeds = {}
    for s in inputs:
        if s["name"] not in data:
            raise KeyError(f"{path} has no array '{s['name']}' (it has {sorted(data.files)})")
        shape = [int(d) for d in s["shape"]]
        arr = np.asarray(data[s["name"]]).astype(s["dtype"])
        if list(arr.shape) != shape and arr.ndim == len(shape) and list(arr.shape[1:]) == shape[1:]:
            arr = arr[: shape[0]]
        if list(arr.shape) != shape:
            raise ValueError(f"{path}: '{s['name']}' has shape {list(arr.shape)}, the model wants {shape}")
        feeds[s["name"]] = arr
    return feeds


# --------------------------------------------------------------------------------------------- summary
def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {k: round(float(v), 4) for k, v in
            (("mean", a.mean()), ("p50", p50), ("p90", p90), ("p99", p99), ("min", a.min()), ("max", a.max()),
             ("std", a.std()))}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num_threads() -> int | None:
    try:
        import tvm

        f = tvm.get_global_func("runtime.NumThreads", True)
        return int(f()) if f is not None else None
    except Exception:  # noqa: BLE001 - informational only
        return None


def measure(out_dir: str | os.PathLike, runs: int = 100, warmup: int = 10, feeds: dict[str, np.ndarray] | None = None,
            kernels: bool = True, kernel_runs: int | None = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load, run once, time; the JSON the command prints."""
    session = Session(out_dir, spec)
    feeds = feeds if feeds is not None else seeded_feeds(session.spec["inputs"])
    outputs = session.run(feeds)
    samples = session.time(feeds, runs, warmup)
    result: dict[str, Any] = {
        "schema": "edgec.runtime/1", "model": str(Path(out_dir) / MODEL_FILE), "machine": platform.machine(),
        "cpu": cpu_name(), "threads": num_threads(), "runs": runs, "warmup": warmup,
        "latency_ms": latency_stats(samples),
        "outputs": [{"name": s["name"], "shape": list(o.shape), "dtype": str(o.dtype)}
                    for s, o in zip(session.spec["outputs"], outputs)],
        "kernels": [],
    }
    if kernels:
        result["kernels"] = session.time_kernels(feeds, kernel_runs or max(5, min(runs, 20)), warmup=1)
    result["_outputs"] = outputs
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgec.device.tvm_runner", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="edgec output folder with model.so and manifest.json")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--inputs", help=".npz with one array per input name (default: seeded uniform [0, 1))")
    p.add_argument("--save-outputs", help="write the outputs of one run to this .npz")
    p.add_argument("--no-kernels", action="store_true", help="skip the per-kernel timing")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1 and --warmup at least 0")
    try:
        spec = read_spec(Path(args.out))
        feeds = npz_feeds(args.inputs, spec["inputs"]) if args.inputs else None
        result = measure(args.out, args.runs, args.warmup, feeds, kernels=not args.no_kernels, spec=spec)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"edgec_runtime: {e}", file=sys.stderr)
        return 2
    outputs = result.pop("_outputs")
    if args.save_outputs:
        np.savez(args.save_outputs, **{s["name"]: o for s, o in zip(spec["outputs"], outputs)})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
