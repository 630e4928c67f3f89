from __future__ import annotations

from pathlib import Path

import pytest

from edgec import ConfigError, list_targets, load_target

REQUIRED = {"intel-cpu", "jetson-orin-nano", "jetson-agx-orin", "jetson-nano", "rpi4", "rpi5", "rk3588", "arm64"}


def test_every_required_target_exists_and_parses() -> None:
    targets = {t.name: t for t in list_targets()}
    assert REQUIRED <= set(targets)
    for t in targets.values():
        assert t.backend in ("openvino", "tvm", "tensorrt")
        assert t.default_precision in t.precisions


def test_aliases_and_facts() -> None:
    assert load_target("jetson").name == "jetson-orin-nano"
    assert load_target("jetson").options["compute_capability"] == "8.7"
    assert "int8" not in load_target("jetson-nano").precisions
    assert load_target("rpi4").options["mcpu"] == "cortex-a72"
    assert load_target("rk3588").options["mcpu"] == "cortex-a76"


def test_unknown_target_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_target("jetsn")
    msg = str(e.value)
    assert "Target 'jetsn' not found" in msg and "Did you mean 'jetson'" in msg and "intel-cpu" in msg


def test_target_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my-board.toml"
    path.write_text('name = "my-board"\nbackend = "tvm"\narch = "aarch64"\nprecisions = ["fp32"]\n'
                    '[tvm]\nmcpu = "cortex-a53"\n')
    t = load_target(str(path))
    assert t.name == "my-board" and t.options["mcpu"] == "cortex-a53"


@pytest.mark.parametrize("text, match", [
    ('name = "x"\n', "lacks backend"),
    ('name = "x"\nbackend = "coreml"\narch = "a"\nprecisions = ["fp32"]\n', "backend 'coreml'"),
    ('name = "x"\nbackend = "tvm"\narch = "a"\nprecisions = ["fp8"]\n', "unknown precision"),
    ('name = = \n', "not valid TOML"),
])
def test_bad_target_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_target(str(path))
