"""The CLI's contracts: JSON outputs, exit codes (0 ok, 2 bad input, 3 backend unavailable), no partial output."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import edgec.target
from edgec import cli
from edgec.cli import main
from edgec.errors import ConfigError
from edgec.target import TARGETS_DIR


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_targets_lists_and_shows_what_the_target_files_say(capsys, tmp_path: Path, monkeypatch) -> None:
    """`edgec targets` has one row per target file with its backend, arch, precisions and aliases (read here with
    tomllib); `targets show ALIAS` prints that file's backend table; a folder with one other file lists only it."""
    files = [tomllib.loads(p.read_text()) for p in sorted(TARGETS_DIR.glob("*.toml"))]
    code, out, _ = _run(capsys, "targets")
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == ["target", "backend", "arch", "precisions", "aliases"]
    expected = [[f["name"], f["backend"], f["arch"], ",".join(f["precisions"]), ",".join(f.get("aliases", []))]
                for f in files]
    assert [line.split() for line in lines] == [[v for v in row if v] for row in expected]
    orin = next(f for f in files if "jetson" in f.get("aliases", ()))
    code, out, _ = _run(capsys, "targets", "show", "jetson")
    shown = json.loads(out)
    assert code == 0 and shown["name"] == orin["name"] and shown["tensorrt"] == orin["tensorrt"]
    boards = tmp_path / "targets"
    boards.mkdir()
    (boards / "my-board.toml").write_text('name = "my-board"\naliases = ["mine"]\nbackend = "tvm"\narch = "riscv64"\n'
                                          'precisions = ["fp32"]\n[tvm]\nmtriple = "riscv64-linux-gnu"\nmcpu = "x"\n')
    monkeypatch.setattr(edgec.target, "TARGETS_DIR", boards)
    code, out, _ = _run(capsys, "targets")
    assert code == 0 and [line.split() for line in out.splitlines()[1:]] == [["my-board", "tvm", "riscv64", "fp32",
                                                                             "mine"]]
    code, out, _ = _run(capsys, "targets", "show", "mine")
    assert code == 0 and json.loads(out)["tvm"] == {"mtriple": "riscv64-linux-gnu", "mcpu": "x"}


@pytest.mark.parametrize("args, code, message", [
    (["compile", "{missing}", "--target", "intel-cpu"], 2, "does not exist"),
    (["compile", "{model}", "--target", "jetsn"], 2, "Did you mean 'jetson'"),
    (["compile", "{model}", "--target", "jetson-nano", "--precision", "int8"], 2, "cannot run int8"),
    (["compile", "{model}", "--target", "intel-cpu", "--input-shape", "x=1x4x16x16"], 2, "does not match"),
    (["compile", "{model}", "--target", "intel-cpu", "--input-shape", "x:1x3"], 2, "Bad --input-shape"),
    (["compile", "{corrupt}", "--target", "intel-cpu"], 2, "corrupt"),
    (["compile", "{text}", "--target", "intel-cpu"], 2, "ONNX"),
    (["profile", "{missing}"], 2, "not an edgec output folder"),
    (["targets", "show", "nope"], 2, "not found"),
])
def test_bad_input_exit_codes(capsys, tmp_path: Path, tiny_onnx: Path, args, code, message) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_onnx.read_bytes()[:200])
    text = tmp_path / "readme.onnx"
    text.write_text("hello\n" * 50)
    paths = {"model": tiny_onnx, "missing": tmp_path / "missing.onnx", "corrupt": corrupt, "text": text}
    out_dir = tmp_path / "out"
    argv = [a.format(**paths) for a in args] + (["-o", str(out_dir)] if args[0] == "compile" else [])
    got, _, err = _run(capsys, *argv)
    assert got == code, err
    assert message in err
    errors = [line for line in err.splitlines() if not line.startswith("edgec: loading")]
    assert len(errors) == 1 and errors[0].startswith("edgec: error:") and "Traceback" not in err
    assert not out_dir.exists() and _leftovers(tmp_path) == sorted(p.name for p in (tiny_onnx, corrupt, text)
                                                                    if p.parent == tmp_path)


def test_missing_openvino_exits_3_with_the_install_hint(capsys, monkeypatch, tmp_path: Path, tiny_onnx: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees on a base install
    code, _, err = _run(capsys, "compile", str(tiny_onnx), "--target", "intel-cpu", "-o", str(tmp_path / "o"))
    assert code == 3
    assert "pip install 'edgec[openvino]'" in err
    assert not (tmp_path / "o").exists()


def test_import_edgec_needs_only_the_base_install() -> None:
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('openvino', 'torch', 'tvm', 'tensorrt', 'nncf'):\n"
            "            raise ImportError(name + ' blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import edgec\n"
            "print(edgec.compile, edgec.load_target('jetson').name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "function compile" in result.stdout and "jetson-orin-nano" in result.stdout


@pytest.mark.requires_openvino
def test_compile_and_profile_json(capsys, tmp_path: Path, tiny_onnx: Path) -> None:
    out = tmp_path / "out"
    samples = tmp_path / "samples.npz"
    rng = np.random.default_rng(0)
    np.savez(samples, x=rng.random((8, 3, 16, 16), dtype=np.float32))
    code, stdout, err = _run(capsys, "compile", str(tiny_onnx), "--target", "intel-cpu", "-o", str(out),
                             "--calib", str(samples), "--runs", "20", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["target"] == "intel-cpu" and summary["precision"] == "fp32"
    assert summary["accuracy"]["cosine_min"] > 0.9999
    assert {"manifest.json", "model.onnx", "model.xml", "model.bin", "report.json", "report.html",
            "profile.json"} <= set(_leftovers(out))
    code, stdout, err = _run(capsys, "profile", str(out), "--runs", "10", "--json")
    assert code == 0, err
    prof = json.loads(stdout)
    assert prof["schema"] == "edgec.profile/1" and prof["runs"] == 10
    assert set(prof["latency_ms"]) == {"mean", "p50", "p90", "p99", "min", "max", "std"}
    assert prof["mapped"]["onnx_nodes"] >= 0.9
    assert all(set(r) >= {"layer", "op", "exec", "precision", "time_ms", "share", "onnx_nodes", "module", "where"}
               for r in prof["layers"])
    assert all(r["module"] is None for r in prof["layers"])  # plain ONNX: no PyTorch source, and no guessing


def test_keep_float_takes_comma_lists(capsys, monkeypatch, tiny_onnx: Path) -> None:
    """--keep-float a,b --keep-float c reaches compile() as one tuple of names, blanks dropped."""
    seen: dict = {}

    def fake_compile(model, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(cli, "compile", fake_compile)
    code, _, err = _run(capsys, "compile", str(tiny_onnx), "-p", "int8", "--keep-float", "conv1, conv2,",
                        "--keep-float", "fc")
    assert code == 2 and "stop here" in err
    assert seen["keep_float"] == ("conv1", "conv2", "fc")


@pytest.mark.requires_openvino
def test_keep_float_with_an_unknown_node_exits_2(capsys, tmp_path: Path, tiny_onnx: Path) -> None:
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32))
    code, _, err = _run(capsys, "compile", str(tiny_onnx), "-p", "int8", "--calib", str(samples), "-o",
                        str(tmp_path / "out"), "--range-search", "0", "--keep-float", "conv1,no_such_node")
    assert code == 2 and "no_such_node" in err and "conv1" in err
    assert _leftovers(tmp_path / "out") == []
