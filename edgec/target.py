"""Targets: one TOML file per board in edgec/targets/. `load_target(name | alias | path)`."""
from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .backends import BACKENDS
from .errors import ConfigError
from .shipped import shipped

TARGETS_DIR = shipped("targets")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed", "int8-weights")


@dataclass(frozen=True)
class Target:
    """What a board is and what it can run. `options` holds the backend's own table of the file."""

    name: str
    backend: str
    arch: str
    precisions: tuple[str, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    default_precision: str = "fp32"
    round_to: int = 1
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, hash=False)
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "arch": self.arch, "precisions": list(self.precisions),
                "default_precision": self.default_precision, "description": self.description,
                "aliases": list(self.aliases), "round_to": self.round_to, self.backend: dict(self.options)}


def target_files() -> list[Path]:
    return sorted(TARGETS_DIR.glob("*.toml"))


def list_targets() -> list[Target]:
    return [_parse(p) for p in target_files()]


def load_target(name: str | Target) -> Target:
    """A target by name, alias, or path to a .toml file."""
    if isinstance(name, Target):
        return name
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"Target file '{path}' does not exist.")
        return _parse(path)
    targets = list_targets()
    for t in targets:
        if name == t.name or name in t.aliases:
            return t
    names = sorted({n for t in targets for n in (t.name, *t.aliases)})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Target '{name}' not found.{hint} Choose from: {', '.join(names)} "
                      "(or pass a path to a target .toml file).")


def _parse(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"Target file '{path}' is not valid TOML: {e}") from e
    missing = [k for k in ("name", "backend", "arch", "precisions") if k not in data]
    if missing:
        raise ConfigError(f"Target file '{path}' lacks {', '.join(missing)}.")
    backend = data["backend"]
    if backend not in BACKENDS:
        raise ConfigError(f"Target file '{path}': backend '{backend}' is not one of {', '.join(BACKENDS)}.")
    bad = [p for p in data["precisions"] if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"Target file '{path}': unknown precision {bad}; use {', '.join(PRECISIONS)}.")
    return Target(
        name=data["name"], backend=backend, arch=data["arch"], precisions=tuple(data["precisions"]),
        description=data.get("description", ""), aliases=tuple(data.get("aliases", ())),
        default_precision=data.get("default_precision", data["precisions"][0]),
        round_to=int(data.get("prune", {}).get("round_to", 1)),
        options=MappingProxyType(dict(data.get(backend, {}))), path=str(path),
    )


def with_dla(target: Target, core: int | None, gpu_fallback: bool, precision: str) -> Target:
    """`target` with DLA core `core` chosen (a TensorRT build.json's dla_core); ConfigError saying why where it
    can't be: a board without DLA, a core it lacks, a TensorRT without DLA (10.7 was the last), or not fp16."""
    if core is None:
        if gpu_fallback:
            raise ConfigError("--gpu-fallback goes with --dla N (which layers DLA can't run fall back to the GPU).")
        return target
    boards = sorted(t.name for t in list_targets() if int(t.options.get("dla_cores", 0)) > 0)
    cores = int(target.options.get("dla_cores", 0)) if target.backend == "tensorrt" else 0
    if cores == 0:
        raise ConfigError(f"--dla: {target.name} has no DLA ({target.description}). Targets with DLA: "
                          f"{', '.join(boards)}; or compile without --dla (the GPU runs everything).")
    if not 0 <= core < cores:
        raise ConfigError(f"--dla {core}: {target.name} has DLA cores 0..{cores - 1}.")
    version = str(target.options.get("tensorrt_version", ""))
    if tuple(int(p) for p in re.findall(r"\d+", version)[:2]) > (10, 7):
        raise ConfigError(f"--dla: {target.name}'s TensorRT {version} has no DLA (10.7 was the last release with it).")
    if precision != "fp16":
        raise ConfigError(f"--dla builds fp16 engines (DLA computes fp16 or int8, never fp32; edgec does not yet "
                          f"check DLA's int8 rules): use --precision fp16 with --dla, not {precision}.")
    chosen = {**target.options, "dla_core": core, "gpu_fallback": bool(gpu_fallback)}
    return replace(target, options=MappingProxyType(chosen))
