"""The TensorRT device runner (edgec/device/trt_runner.py) across TensorRT generations, on stand-ins for TensorRT
and libcudart (tests/fake_tensorrt.py: each generation has only its release's API; the "engine" runs the bundle's
ONNX in ONNX Runtime on the buffers the runner filled). What this proves: which API each generation is driven
through, that nothing a bundle asks for is dropped silently, the version matrix and its messages, the per-device
timing cache, the outputs check, DLA, and the host commands on top (`edgec build/profile OUT`, in-process and
over ssh). What it cannot prove: that real TensorRT builds and times these engines (no TensorRT here)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec import BackendUnavailable, ConfigError
from edgec.cli import main
from edgec.device import trt_runner
from fake_tensorrt import FakeCudart, fake_tensorrt
from sshd import fake_jetson_python

GENERATIONS = {  # fake TensorRT release -> the shipped target made for its JetPack
    "8.2.1.8": "jetson-nano", "8.5.2.2": "jetson-xavier-nx", "10.3.0.30": "jetson-orin-nano", "11.4.0.106": None}


def _trt11_target(folder: Path) -> Path:
    path = folder / "orin-trt11.toml"
    path.write_text('name = "orin-trt11"\nbackend = "tensorrt"\narch = "aarch64"\nprecisions = ["fp32", "fp16"]\n'
                    '[tensorrt]\ncompute_capability = "8.7"\ntensorrt_version = "11.4"\njetpack = "7.0"\n')
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fp16 bundle per generation's target, compiled once (tiny conv net, 16 validation samples)."""
    from models import tiny_conv_onnx

    root = tmp_path_factory.mktemp("bundles")
    model = root / "tiny.onnx"
    model.write_bytes(tiny_conv_onnx().SerializeToString())
    calib = {"x": np.random.default_rng(0).random((24, 3, 16, 16), dtype=np.float32)}
    out = {}
    for version, target in GENERATIONS.items():
        target = target or str(_trt11_target(root))
        out[version] = edgec.compile(model, target, "fp16", calibration=calib, output_dir=root / version,
                                     progress=False, use_cache=False).output_dir
    return out


@pytest.fixture
def bundle(bundles: dict[str, Path], tmp_path: Path):
    def copy(version: str) -> Path:
        return Path(shutil.copytree(bundles[version], tmp_path / f"b-{version}"))
    return copy


@pytest.mark.parametrize("version", list(GENERATIONS))
def test_each_generation_builds_and_profiles_through_its_own_api(version: str, bundle, tmp_path: Path) -> None:
    """8.2: explicit batch flag, max_workspace_size, binding indices + execute_async_v2; 8.5: memory pools, named
    tensors + execute_async_v3, weakly typed with FP16; 10/11: strongly typed, no precision flag. The engine's
    outputs on the host's validation samples pass the check; every layer maps back to its ONNX node."""
    out = bundle(version)
    trt, cuda = fake_tensorrt(version), trt_runner.Cuda(FakeCudart(compute_capability=(5, 3) if version.startswith(
        "8.2") else (7, 2) if version.startswith("8.5") else (8, 7)))
    cache = tmp_path / "trt-cache"
    info = trt_runner.build_engine(str(out), trt, cuda, str(cache))
    calls = trt.calls
    create = next(c for c in calls if c[0] == "create_network")[1]
    flag_sets = [c[1] for c in calls if c[0] == "build_serialized_network"]
    if version.startswith("8."):
        assert create == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        assert flag_sets == [["BuilderFlag.FP16"]] and info["strongly_typed"] is False
    else:
        assert create == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert flag_sets == [[]] and info["strongly_typed"] is True
    workspace = [c[0] for c in calls if c[0] in ("max_workspace_size", "set_memory_pool_limit")]
    assert workspace == (["max_workspace_size"] if version.startswith("8.2") else ["set_memory_pool_limit"])
    assert (out / "model.engine").is_file() and json.loads((out / "engine.json").read_text())["device_key"] == info["device_key"]
    result = trt_runner.profile(str(out), runs=5, warmup=1, trt=trt, cuda=cuda, cache_root=str(cache))
    assert ("execute_async_v2" if version.startswith("8.2") else "execute_async_v3") in {c[0] for c in calls}
    assert result["check"]["ok"] and result["check"]["samples"] == 16
    assert all(row["cosine_min"] > 0.999 for row in result["check"]["outputs"])
    assert result["latency_ms"]["p50"] > 0 and len(result["samples_ms"]) == 5
    nodes = json.loads((out / "build.json").read_text())["onnx_nodes"]
    assert [r["onnx_nodes"] for r in result["layers"]] == [[n] for n in nodes]
    assert all(r["time_ms"] > 0 and r["precision"] == "fp32" for r in result["layers"])
    assert (out / trt_runner.OUTPUTS_FILE).is_file() and (out / trt_runner.PROFILE_FILE).is_file()


def test_the_timing_cache_is_kept_per_device(bundle, tmp_path: Path) -> None:
    """The first build writes ~/.cache/edgec/trt/<device key>/timing.cache; the next build on that device starts
    from it (engine.json says so); another GPU gets its own."""
    out, cache = bundle("10.3.0.30"), tmp_path / "cache"
    orin = trt_runner.Cuda(FakeCudart(gpu="Orin", compute_capability=(8, 7)))
    first = trt_runner.build_engine(str(out), fake_tensorrt("10.3.0.30"), orin, str(cache))
    second = trt_runner.build_engine(str(out), fake_tensorrt("10.3.0.30"), orin, str(cache))
    assert (first["timing_cache"]["was_warm"], second["timing_cache"]["was_warm"]) == (False, True)
    assert Path(first["timing_cache"]["path"]) == cache / first["device_key"] / "timing.cache"
    assert first["device_key"] == "Orin-sm8.7-trt10.3.0.30-cuda12.6"
    other = trt_runner.build_engine(str(out), fake_tensorrt("10.3.0.30"),
                                    trt_runner.Cuda(FakeCudart(gpu="AGX Orin")), str(cache))
    assert other["timing_cache"]["was_warm"] is False and other["device_key"] != first["device_key"]


def test_an_engine_from_another_device_is_rebuilt_before_profiling(bundle, tmp_path: Path) -> None:
    """An engine only runs where it was built: profile rebuilds when engine.json names another device."""
    out = bundle("10.3.0.30")
    trt_runner.build_engine(str(out), fake_tensorrt("10.3.0.30"), trt_runner.Cuda(FakeCudart(gpu="A")), str(tmp_path))
    trt = fake_tensorrt("10.3.0.30")
    result = trt_runner.profile(str(out), 3, 0, trt, trt_runner.Cuda(FakeCudart(gpu="B")), str(tmp_path))
    assert result["device"]["gpu"] == "B" and [c for c in trt.calls if c[0] == "build_serialized_network"]


def test_a_bundle_for_another_tensorrt_is_refused_with_what_to_do(bundle, tmp_path: Path) -> None:
    """A TensorRT-10.3 bundle on a TensorRT-11 or 8.5 device is refused (exit 3) naming the bundle's target,
    JetPack and TensorRT and the device's: never built with a setting silently dropped."""
    out = bundle("10.3.0.30")
    for version in ("11.4.0.106", "8.5.2.2"):
        with pytest.raises(trt_runner.DeviceError) as e:
            trt_runner.build_engine(str(out), fake_tensorrt(version), trt_runner.Cuda(FakeCudart()), str(tmp_path))
        message = str(e.value)
        assert "jetson-orin-nano (JetPack 6.2, TensorRT 10.3)" in message and f"TensorRT {version}" in message
        assert "flash JetPack 6.2" in message
    assert not (out / "model.engine").exists()


def test_a_builder_flag_the_device_lacks_is_an_error_not_skipped(bundle, tmp_path: Path) -> None:
    """TensorRT 11 has no FP16 flag: a weakly typed fp16 bundle whose version check was edited away still fails,
    naming the flag (the old backend skipped it and built an fp32 engine labelled fp16)."""
    out = bundle("8.5.2.2")
    cfg = json.loads((out / "build.json").read_text())
    cfg["requires"]["tensorrt"] = "11.4"
    (out / "build.json").write_text(json.dumps(cfg))
    with pytest.raises(trt_runner.DeviceError, match="builder flag\\(s\\) FP16 that TensorRT 11.4.0.106"):
        trt_runner.build_engine(str(out), fake_tensorrt("11.4.0.106"), trt_runner.Cuda(FakeCudart()), str(tmp_path))
    api = trt_runner.TrtApi(fake_tensorrt("8.5.2.2"))
    with pytest.raises(trt_runner.DeviceError, match="strongly typed network .* needs TensorRT 10 or later"):
        api.network_flags(strongly_typed=True)


def test_the_version_matrix() -> None:
    """requirement_problems: same major passes (older minor warns), another major is refused; int8 on a GPU
    below compute capability 6.1 (the Nano) is refused; another compute capability is a warning."""
    facts = {"tensorrt": "10.3.0.30", "compute_capability": "8.7", "gpu": "Orin"}
    cfg = {"target": "t", "precision": "fp16", "requires": {"tensorrt": "10.3", "compute_capability": "8.7",
                                                             "jetpack": "6.2"}}
    assert trt_runner.requirement_problems(cfg, facts) == ([], [])
    older = dict(facts, tensorrt="10.1.0")
    assert trt_runner.requirement_problems(cfg, older)[1] == [
        "TensorRT 10.1.0 here is older than the 10.3 this bundle was compiled for"]
    nano = {"tensorrt": "8.2.1.8", "compute_capability": "5.3", "gpu": "NVIDIA Tegra X1"}
    int8 = {"target": "nano-int8", "precision": "int8", "requires": {"tensorrt": "8.2", "compute_capability": "5.3"}}
    refusals, _ = trt_runner.requirement_problems(int8, nano)
    assert refusals == ["int8 needs compute capability 6.1 or higher; this GPU (NVIDIA Tegra X1) has 5.3: compile "
                        "with --precision fp16"]
    _, warnings = trt_runner.requirement_problems(cfg, dict(facts, compute_capability="7.2"))
    assert "compiled for compute capability 8.7" in warnings[0]
    assert trt_runner.parse_version("8.2.1.8") == (8, 2) and trt_runner.parse_version("11.4.0.106") == (11, 4)
    with pytest.raises(trt_runner.DeviceError, match="TensorRT 8.0.1 is too old"):
        trt_runner.TrtApi(fake_tensorrt("8.0.1"))


def test_dla_builds_and_names_the_layers_that_fall_back_to_the_gpu(tmp_path: Path, tiny_onnx: Path) -> None:
    """--dla 1 --gpu-fallback on Xavier NX (2 DLA cores, TensorRT 8.5): build.json asks for core 1 with the FP16
    flag, the engine is built for DLA, and the layers DLA can't run are listed (engine.json and the profile);
    without --gpu-fallback they are an error naming them. Refused at compile time where DLA can't be."""
    build = edgec.compile(tiny_onnx, "jetson-xavier-nx", "fp16", dla=1, gpu_fallback=True, output_dir=tmp_path / "o",
                          progress=False)
    cfg = json.loads((build.output_dir / "build.json").read_text())
    assert (cfg["dla_core"], cfg["gpu_fallback"], cfg["builder_flags"], cfg["strongly_typed"]) == (1, True, ["FP16"], False)
    trt = fake_tensorrt("8.5.2.2", dla_cores=2)
    info = trt_runner.build_engine(str(build.output_dir), trt, trt_runner.Cuda(FakeCudart(compute_capability=(7, 2))),
                                   str(tmp_path / "c"))
    assert info["dla"] == {"core": 1, "gpu_fallback": True, "layers_on_gpu": ["pool"]}
    assert ("set_flag", "BuilderFlag.GPU_FALLBACK") in trt.calls
    assert next(c for c in trt.calls if c[0] == "build_serialized_network")[2] is True  # default device: DLA
    cfg["gpu_fallback"] = False
    (build.output_dir / "build.json").write_text(json.dumps(cfg))
    with pytest.raises(trt_runner.BundleError, match="DLA cannot run 1 layer\\(s\\) of this model \\(pool\\)"):
        trt_runner.build_engine(str(build.output_dir), fake_tensorrt("8.5.2.2", dla_cores=2),
                                trt_runner.Cuda(FakeCudart(compute_capability=(7, 2))), str(tmp_path / "c"))
    for target, precision, why in (("jetson-orin-nano", "fp16", "has no DLA"), ("jetson-agx-orin", "int8", "fp16"),
                                   ("jetson-agx-orin", "fp16", "DLA cores 0..1")):
        with pytest.raises(ConfigError, match=why):
            edgec.compile(tiny_onnx, target, precision, dla=2 if "0..1" in why else 0, output_dir=tmp_path / "x",
                          calibration={"x": np.zeros((8, 3, 16, 16), np.float32)}, progress=False)
    with pytest.raises(trt_runner.DeviceError, match="no DLA support"):
        trt_runner.configure_dla(trt_runner.TrtApi(fake_tensorrt("11.4.0.106")), None, None, None, cfg)


def test_outputs_that_disagree_with_the_host_fail_the_check(bundle, tmp_path: Path, capsys) -> None:
    """The device compares its engine's outputs with the fp32 reference the host stored (device_check.npz); a
    wrong engine (here: the reference negated) exits 4, after writing the profile."""
    out = bundle("10.3.0.30")
    with np.load(out / trt_runner.CHECK_FILE) as data:
        arrays = {k: (-data[k] if k.startswith("reference.") else data[k]) for k in data.files}
    np.savez(out / trt_runner.CHECK_FILE, **arrays)
    trt_runner.build_engine(str(out), fake_tensorrt("10.3.0.30"), trt_runner.Cuda(FakeCudart()), str(tmp_path))
    result = trt_runner.profile(str(out), 3, 0, fake_tensorrt("10.3.0.30"), trt_runner.Cuda(FakeCudart()),
                                str(tmp_path))
    assert result["check"]["ok"] is False and result["check"]["outputs"][0]["cosine_min"] < 0


def test_the_runner_command_without_tensorrt_exits_3_with_the_jetpack_hint(bundle, monkeypatch, capsys) -> None:
    """`python3 edgec_trt.py OUT build` where `import tensorrt` fails: one line, exit 3, what to install."""
    out = bundle("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert trt_runner.main([str(out), "build"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgec_trt: error: TensorRT's Python bindings are not importable")
    assert "python3-libnvinfer" in err[0]


def test_host_build_and_profile_run_the_device_runner_in_process(bundle, monkeypatch, tmp_path: Path, capsys) -> None:
    """Where TensorRT is installed, `edgec build OUT && edgec profile OUT` run the same runner in-process; the
    profile maps layers to ONNX nodes and judges the device outputs in the task metric, like the host check."""
    out = bundle("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0.30"))
    monkeypatch.setattr(trt_runner, "load_cudart", FakeCudart)
    monkeypatch.setattr(trt_runner, "CACHE_ROOT", str(tmp_path / "cache"))
    assert main(["build", str(out)]) == 0 and (out / "model.engine").is_file()
    assert main(["profile", str(out), "--runs", "5", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert prof["backend"] == "tensorrt" and prof["latency_ms"]["p50"] > 0
    task = prof["accuracy"]["task_metric"]
    assert prof["accuracy"]["ok"] is True and task["outputs"][0]["metric"] == "top1"
    assert task["outputs"][0]["agreement"] == 100.0
    assert all(row["onnx_nodes"] for row in prof["layers"])


def test_trtexec_json_a_user_has_is_mapped(bundle, tmp_path: Path) -> None:
    """`edgec profile OUT --trtexec-json profile.json layers.json times.json`: trtexec's rows mapped to the bundle's
    ONNX nodes, latency from --exportTimes."""
    out = bundle("10.3.0.30")
    nodes = json.loads((out / "build.json").read_text())["onnx_nodes"]
    (tmp_path / "p.json").write_text(json.dumps([{"count": 10}] + [
        {"name": n, "timeMs": 1.0, "averageMs": 0.1, "medianMs": 0.1, "percentage": 10.0} for n in nodes]))
    (tmp_path / "l.json").write_text(json.dumps({"Layers": [{"Name": n, "LayerType": "X", "Outputs": [
        {"Format/Datatype": "Row major linear FP16 format"}]} for n in nodes]}))
    (tmp_path / "t.json").write_text(json.dumps([{"computeMs": 0.5 + i / 100} for i in range(10)]))
    prof = edgec.profile(out, trtexec_json=[tmp_path / "p.json", tmp_path / "l.json", tmp_path / "t.json"],
                         write=False)
    assert [r.onnx_nodes for r in prof.layers] == [(n,) for n in nodes]
    assert {r.precision for r in prof.layers} == {"fp16"} and prof.latency_ms.p50 == pytest.approx(0.545)
    real = Path(__file__).parent / "fixtures" / "trtexec"  # NVIDIA's trex: another model, so nothing maps here
    prof = edgec.profile(out, trtexec_json=[real / "mobilenet.qat.onnx.engine.profile.json",
                                            real / "mobilenet.qat.onnx.engine.graph.json"], write=False)
    assert len(prof.layers) == 73 and prof.mapped_share("onnx_nodes") == 0.0 and prof.runs > 0
    assert prof.latency_ms.p50 == pytest.approx(sum(r.time_ms for r in prof.layers), rel=1e-3)
    assert sum(r.precision == "int8" for r in prof.layers) == 70
    with pytest.raises(ConfigError, match="not found"):
        edgec.profile(out, trtexec_json=[tmp_path / "missing.json"], write=False)


def test_without_tensorrt_here_the_host_commands_say_where_to_build(bundle, monkeypatch, capsys) -> None:
    """No TensorRT on the host: `edgec build OUT` exits 3 naming --device ssh:// and the on-board command."""
    out = bundle("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="--device ssh://user@jetson"):
        edgec.pipeline.build_engine(out)


pytest_plugins = ["sshd"]


@pytest.mark.timeout(120)
def test_build_and_profile_over_ssh(ssh_env, bundle, tmp_path: Path, capsys) -> None:
    """`edgec build OUT --device ssh://...` copies the bundle over a real OpenSSH connection, runs edgec_trt.py
    there and brings model.engine and engine.json back; `edgec profile OUT --device ssh://...` brings the profile
    and the device's outputs back and judges them in the task metric here. (The device's TensorRT is the 10.3
    stand-in; the ssh transport, the remote command and the files are real.)"""
    out = bundle("10.3.0.30")
    device = f"{ssh_env.url}/{tmp_path / 'remote'}?python={fake_jetson_python(tmp_path)}"
    assert main(["build", str(out), "--device", device]) == 0, capsys.readouterr().err
    assert (out / "model.engine").is_file() and (tmp_path / "remote" / "model.engine").is_file()
    info = json.loads((out / "engine.json").read_text())
    assert info["device"]["tensorrt"] == "10.3.0.30"
    assert info["timing_cache"]["path"].startswith(str(tmp_path / "home" / ".cache" / "edgec" / "trt"))
    capsys.readouterr()
    assert main(["profile", str(out), "--device", device, "--runs", "5", "--json"]) == 0, capsys.readouterr().err
    prof = json.loads(capsys.readouterr().out)
    assert prof["device"].startswith("Orin (fake) at ssh://root@127.0.0.1:")
    assert prof["accuracy"]["ok"] is True and prof["accuracy"]["task_metric"]["outputs"][0]["agreement"] == 100.0
    assert prof["mapped"]["onnx_nodes"] == 1.0 and json.loads((out / "profile.json").read_text())["runs"] == 5


@pytest.mark.timeout(120)
def test_a_device_without_tensorrt_answers_in_one_line(ssh_env, bundle, tmp_path: Path, capsys) -> None:
    """The ssh "device" here has Python and numpy but no TensorRT: `edgec build OUT --device ssh://...` exits 3
    with the runner's one line (what to install), naming the device; no engine comes back."""
    out = bundle("10.3.0.30")
    device = f"{ssh_env.url}/{tmp_path / 'remote'}?python={sys.executable}"
    assert main(["build", str(out), "--device", device]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"edgec: error: On {ssh_env.url} (")
    assert "TensorRT's Python bindings are not importable" in err[0] and "python3-libnvinfer" in err[0]
    assert not (out / "model.engine").exists()
    device = f"{ssh_env.url}/{tmp_path / 'remote'}?python=/no/such/python3"
    assert main(["build", str(out), "--device", device]) == 3
    assert "'/no/such/python3' was not found" in capsys.readouterr().err


def _interpreter(version: str) -> str | None:
    """A real `python<version>` on this machine (pyenv's versions folder, or PATH outside pyenv's shims), or None."""
    import glob
    import shutil

    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}.*" / "bin" / "python")))
    found = shutil.which(f"python{version}")
    return candidates[-1] if candidates else found if found and "/shims/" not in found else None


@pytest.mark.parametrize("version", ["3.6", "3.8", "3.10"])
def test_the_runner_starts_on_each_jetpack_python(version: str, bundle) -> None:
    """JetPack's system Pythons (4.6: 3.6, 5: 3.8, 6: 3.10), run for real: the copied edgec_trt.py imports, parses
    its arguments and answers with one line and exit 3 (no numpy or no TensorRT on this machine), never a
    traceback. vermin checks the syntax of every line; this runs the start."""
    import subprocess

    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine (pyenv install {version} to run this check)")
    out = bundle("10.3.0.30")
    proc = subprocess.run([python, str(out / "edgec_trt.py"), str(out), "build"], capture_output=True, text=True,
                          timeout=60, cwd=out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgec_trt: error: ") and ("python3-numpy" in lines[0] or "libnvinfer" in lines[0])
