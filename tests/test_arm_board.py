"""Profiling TVM builds on an emulated ARM board (qemu-user aarch64) over TVM RPC, directly and via a tracker.

The board is built once per session by edgec board setup (edgec/arm_board.sh) (about half a minute the first time,
seconds when cached in $EDGEC_BOARD_DIR); each board starts in a few seconds.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

import edgec
from edgec import BackendUnavailable, ConfigError
from edgec.errors import BuildError
from edgec.target import TARGETS_DIR

pytestmark = pytest.mark.requires_tvm
board_test = pytest.mark.requires_arm_board


@pytest.fixture(scope="session")
def arm_board_setup() -> None:
    from edgec import board

    board.setup(quiet=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from models import tiny_conv_onnx

    path = tmp_path_factory.mktemp("arm") / "tiny.onnx"
    path.write_bytes(tiny_conv_onnx().SerializeToString())
    return path


def _compile(tiny: Path, target: str | Path, out: Path) -> Path:
    edgec.compile(tiny, str(target), output_dir=out, progress=False, use_cache=False)
    return out


@pytest.fixture(scope="module")
def rpi4_build(tiny: Path, tmp_path_factory) -> Path:
    return _compile(tiny, "rpi4", tmp_path_factory.mktemp("rpi4") / "out")


@pytest.fixture(scope="module")
def a72_board(arm_board_setup):
    from edgec.board import free_port, start_board

    with start_board(free_port(), cpu="cortex-a72") as handle:
        yield handle


@board_test
def test_profile_on_the_board_matches_onnx_runtime_and_names_onnx_nodes(rpi4_build: Path, a72_board) -> None:
    prof = edgec.profile(rpi4_build, device=a72_board.device, runs=20, warmup=3)
    assert "aarch64" in prof.device and "cortex-a72" in prof.device
    assert prof.extra["accuracy"]["ok"] is True and prof.extra["accuracy"]["max_abs_error"] < 1e-4
    assert prof.runs == 20 and 0 < prof.latency_ms.p50 <= prof.latency_ms.p90 <= prof.latency_ms.p99
    convs = sorted(tuple(r.onnx_nodes) for r in prof.layers if "conv2d" in r.op)
    assert convs == [("conv1", "relu1"), ("conv2", "add", "relu2")]
    assert prof.mapped_share("onnx_nodes") > 0.5
    saved = json.loads((rpi4_build / "profile.json").read_text())
    assert saved["accuracy"]["max_abs_error"] == prof.extra["accuracy"]["max_abs_error"]
    assert "no RPC" in saved["runtime"]["latency_timing"]


@board_test
def test_cli_profile_over_rpc(rpi4_build: Path, a72_board, capsys) -> None:
    from edgec.cli import main

    assert main(["profile", str(rpi4_build), "--device", a72_board.device, "--runs", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "edgec.profile/1" and data["accuracy"]["ok"] is True
    assert any(row["onnx_nodes"] for row in data["layers"])


@board_test
def test_a_model_with_two_outputs_is_checked_output_by_output_on_the_board(a72_board, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    from models import tiny_conv_onnx

    model = tiny_conv_onnx()
    model.graph.output.append(helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, [1, 8, 1, 1]))
    out = _compile_proto(model, tmp_path)
    prof = edgec.profile(out, device=a72_board.device, runs=3, warmup=1, write=False)  # a tuple came back opaque
    assert prof.extra["accuracy"]["ok"] is True and len(prof.extra["accuracy"]["per_output_max_abs_error"]) == 2


def _compile_proto(model, tmp_path: Path) -> Path:
    path = tmp_path / "two.onnx"
    path.write_bytes(model.SerializeToString())
    return _compile(path, "rpi4", tmp_path / "out")


@board_test
def test_a_board_whose_outputs_disagree_exits_4(rpi4_build: Path, a72_board, tmp_path: Path, capsys) -> None:
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgec.cli import main

    wrong = tmp_path / "wrong"
    shutil.copytree(rpi4_build, wrong)
    # model.so on the board computes the original graph; the host's reference now runs a different one.
    proto = onnx.load(wrong / "model.onnx")
    w1 = next(t for t in proto.graph.initializer if t.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w1), "w1"))
    onnx.save(proto, wrong / "model.onnx")
    assert main(["profile", str(wrong), "--device", a72_board.device, "--runs", "3", "--warmup", "1"]) == 4
    captured = capsys.readouterr()
    assert "disagree with ONNX Runtime" in captured.err and "do not deploy" in captured.err
    assert "latency p50" in captured.out  # the profile is still shown, and written
    assert json.loads((wrong / "profile.json").read_text())["accuracy"]["ok"] is False
    assert np.isfinite(json.loads((wrong / "profile.json").read_text())["accuracy"]["max_abs_error"])


@board_test
def test_a_build_for_a_cpu_the_board_lacks_fails_with_illegal_instruction(tiny: Path, rpi4_build: Path, a72_board,
                                                                          tmp_path: Path) -> None:
    rpi4 = (TARGETS_DIR / "rpi4.toml").read_text()
    sve = (rpi4.replace('name = "rpi4"', 'name = "a72-sve"').replace('aliases = ["raspberry-pi-4"]', "aliases = []")
           .replace('mattr = ["+neon"]', 'mattr = ["+neon", "+sve"]'))
    (tmp_path / "a72-sve.toml").write_text(sve)
    out = _compile(tiny, tmp_path / "a72-sve.toml", tmp_path / "sve")
    t0 = time.monotonic()
    with pytest.raises(BuildError, match=r"SIGILL \(illegal instruction\).*ISA mismatch") as e:
        edgec.profile(out, device=a72_board.device, runs=3, warmup=1, write=False)
    assert time.monotonic() - t0 < 60
    assert "+sve" in str(e.value) and a72_board.device in str(e.value)
    # The board keeps serving: the right build still profiles on it.
    prof = edgec.profile(rpi4_build, device=a72_board.device, runs=3, warmup=1, write=False)
    assert prof.extra["accuracy"]["ok"] is True
    assert "crashed" in a72_board.log_text() and "SIGILL" in a72_board.log_text()


@board_test
def test_a_tracker_serves_two_boards_under_their_keys_at_once(tiny: Path, rpi4_build: Path, tmp_path: Path) -> None:
    from edgec.board import free_port, start_board, start_tracker

    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado: pip install tornado")
    rk3588_build = _compile(tiny, "rk3588", tmp_path / "rk3588")
    with start_tracker(free_port()) as tracker:
        with start_board(free_port(), cpu="cortex-a72", key="rpi4", tracker=tracker.address), \
                start_board(free_port(), cpu="cortex-a76", key="rk3588", tracker=tracker.address):
            results: dict[str, object] = {}

            def run(name: str, out: Path) -> None:
                try:
                    results[name] = edgec.profile(out, device=f"tracker://{tracker.address}/{name}", runs=10,
                                                  warmup=2, write=False)
                except Exception as e:  # noqa: BLE001 - checked below
                    results[name] = e

            threads = [threading.Thread(target=run, args=a) for a in (("rpi4", rpi4_build), ("rk3588", rk3588_build))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for name in ("rpi4", "rk3588"):
                prof = results[name]
                assert isinstance(prof, edgec.Profile), prof
                assert prof.extra["accuracy"]["ok"] is True and prof.target == name
            assert "cortex-a72" in results["rpi4"].device and "cortex-a76" in results["rk3588"].device
            with pytest.raises(BackendUnavailable, match="no board with key 'jetson'.*rk3588, rpi4"):
                edgec.profile(rpi4_build, device=f"tracker://{tracker.address}/jetson", runs=1, write=False)


@board_test
def test_binding_beyond_loopback_is_explicit_and_warns(arm_board_setup) -> None:
    from edgec.board import free_port, start_board

    with start_board(free_port(), host="0.0.0.0") as handle:
        assert "WARNING" in handle.log_text() and "0.0.0.0" in handle.log_text()


# ---------------------------------------------------------------------------- no board needed: failures
def test_an_unreachable_device_fails_fast_naming_the_address() -> None:
    from edgec.backends.tvm import connect, parse_device
    from edgec.board import free_port

    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}.*edgec board start"):
        connect(parse_device(f"rpc://127.0.0.1:{port}"))
    with pytest.raises(BackendUnavailable, match=f"tracker at 127.0.0.1:{port}"):
        connect(parse_device(f"tracker://127.0.0.1:{port}/rpi4"))
    assert time.monotonic() - t0 < 5
    for bad in ("rpc://127.0.0.1", "rpc://host:99999", "tracker://127.0.0.1:9190", "ssh://board:22"):
        with pytest.raises(ConfigError, match="rpc://HOST:PORT or tracker://HOST:PORT/KEY"):
            parse_device(bad)


def test_a_device_that_accepts_but_never_answers_times_out(monkeypatch) -> None:
    import edgec.backends.tvm as tvm_backend

    monkeypatch.setattr(tvm_backend, "_CONNECT_TIMEOUT_S", 2.0)
    with socket.socket() as silent:  # listens, never speaks TVM RPC
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}.*did not answer within 2 s"):
            tvm_backend.connect(tvm_backend.parse_device(f"rpc://127.0.0.1:{port}"))
        assert time.monotonic() - t0 < 10


def test_board_commands_without_a_board_say_how_to_set_one_up(tmp_path: Path, monkeypatch, capsys) -> None:
    from edgec.board import start_board
    from edgec.cli import main

    monkeypatch.setenv("EDGEC_BOARD_DIR", str(tmp_path / "no-board"))
    assert main(["board", "start", "--target", "rk3588", "--port", "9"]) == 3
    assert "edgec board setup" in capsys.readouterr().err
    with pytest.raises(BackendUnavailable, match="edgec board setup"):
        start_board(9)
