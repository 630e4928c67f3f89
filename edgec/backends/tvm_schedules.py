"""Default CPU schedules for TVM 0.27 Relax kernels, without tuning.

TVM's default CPU pipeline leaves every kernel as a plain loop nest (36-40x slower than ONNX Runtime), and
dlight's CPU rules cover only GEMV and softmax-like reductions. These rules cover what CNNs spend their time
in, once the graph is in NHWC/HWIO layout (ConvertLayout before legalization):

- conv2d_nhwc / group_conv2d_nhwc (with its fused epilogue): a register-blocked micro-kernel, `tw` output
  pixels x `tc` output channels accumulated in registers, channels vectorized (weights are contiguous in
  HWIO), pixels unrolled, outer tiles parallel, epilogue (bias, residual, ReLU) applied per tile;
- single reductions (pooling, mean, matmul/dense): the innermost output axis vectorized under the reduction;
- injective kernels (elementwise, pad, transpose): fused, vectorized, parallel when large.

Imports TVM at call time only (edgec's convention: `import edgec` needs no SDK). Every rule returns None
when the kernel does not match, and `schedule_module` leaves such kernels as they are and says which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PARALLEL_MIN = 16384  # elements: below this, a parallel loop costs more in thread wake-ups than it saves


@dataclass(frozen=True)
class CPUInfo:
    """What the schedules need to know of the target CPU."""

    lanes: int           # fp32 lanes of one vector register
    registers: int       # vector registers (32 on AArch64 and AVX-512, 16 on AVX2/SSE)

    @property
    def max_accumulators(self) -> int:
        # Leave room for the weight vectors and the broadcast input.
        return 24 if self.registers >= 32 else 12


def cpu_info(target: Any) -> CPUInfo:
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = int(llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - an unknown CPU: assume 128-bit vectors (NEON, SSE)
        bits = 128
    bits = bits if bits > 0 else 128
    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    registers = 32 if bits >= 512 or triple.startswith("aarch64") or triple.startswith("arm64") else 16
    return CPUInfo(lanes=max(bits // 32, 1), registers=registers)


def schedule_module(mod: Any, target: Any) -> tuple[Any, dict[str, str]]:
    """Schedule every PrimFunc of `mod` for `target`. Returns the module and {kernel: rule or 'unscheduled'}."""
    from tvm import tirx

    info = cpu_info(target)
    rules = {}
    updated = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        applied = "unscheduled"
        for rule_name, rule in (("conv2d-nhwc", _conv_nhwc), ("reduction", _single_reduction),
                                ("injective", _injective), ("dlight", _dlight)):
            try:
                sch = rule(func, info, target)
            except Exception:  # noqa: BLE001 - a schedule primitive refused: the rule does not fit this kernel
                sch = None
            if sch is not None:
                updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                applied = rule_name
                break
        rules[name] = applied
    for gv, func in updated.items():
        mod[gv] = func
    return mod, rules


# ------------------------------------------------------------------------------------------------ helpers
def _rule(fn):
    """Turn `fn(sch, info, target) -> bool` into `rule(func, info, target) -> Schedule | None`."""
    def rule(func: Any, info: CPUInfo, target: Any) -> Any:
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        return sch if fn(sch, info, target) else None

    rule.__name__ = fn.__name__
    rule.__doc__ = fn.__doc__
    return rule


def _extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def _blocks(sch: Any) -> list[Any]:
    from tvm.s_tir.dlight import normalize_prim_func

    infos = normalize_prim_func(sch)
    if infos is None:
        raise ValueError("not a normal-form PrimFunc")
    return infos


def _loops_and_kinds(sch: Any, block: Any) -> tuple[list[Any], str]:
    """The block's loops and, per loop, 'S' (spatial) or 'R' (reduction): fresh kernels bind loop i to iter i."""
    from tvm import tirx

    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    if len(loops) != len(iters):
        raise ValueError("loops and block iterators do not correspond")
    kinds = "".join({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(i.iter_type, "O") for i in iters)
    return list(loops), kinds


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _vector_split(extent: int, lanes: int, max_vectors: int = 1) -> int:
    """How many elements of an `extent`-long innermost loop to vectorize: a power-of-two number of full
    vectors (up to `max_vectors`) dividing it, else half or quarter vectors, else the whole loop when it is
    shorter than a vector. Never 3 or 6 vectors: LLVM lowers such odd-sized vector types very badly
    (a 48-lane fp32 conv tile ran 60x slower than a 32-lane one on AVX-512)."""
    v = 1
    while v * 2 <= max_vectors:
        v *= 2
    while v >= 1:
        if extent % (v * lanes) == 0:
            return v * lanes
        v //= 2
    part = lanes // 2
    while part >= 2:
        if extent % part == 0:
            return part
        part //= 2
    return extent if extent <= lanes else 1


def _vectorize_innermost(sch: Any, block: Any, lanes: int) -> None:
    """Vectorize the block's innermost loop, if that loop is the block's own (holds no other block).

    A block moved under a shared loop (reverse_compute_at) may have no loop of its own: its innermost loop is
    then the shared outer loop, and vectorizing that would vectorize every block under it, reductions
    included. PP-OCRv4 rec's classifier head (matmul 40x120 @ 120x6625 + bias) got exactly that: 6625 has no
    vector-sized divisor, so the epilogue sat directly under the fused 40*6625 loop, which was split by 8 and
    vectorized around the 120-step reduction; vectors straddled rows (8 does not divide 6625) and TVM
    compiled it to wrong results (cosine 0.26-0.31 vs ONNX Runtime), and the loop lost its parallel.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    if len(sch.get_child_blocks(inner)) != 1:
        return
    ext = _extent(sch, inner)
    if ext is None or ext < 2:
        return
    factor = _vector_split(ext, lanes)
    if factor < 2:
        return
    if factor < ext:
        _, inner = sch.split(inner, factors=[None, factor])
    sch.vectorize(inner)


def _output_is_param(sch: Any, block: Any) -> bool:
    buf = sch.get(block).writes[0].buffer
    return any(b.same_as(buf) for b in sch.mod["main"].buffer_map.values())


# --------------------------------------------------------------------------------------------------- conv
def conv_tile(out_w: int, out_c: int, info: CPUInfo) -> tuple[int, int]:
    """(tw, tc): output pixels x output channels accumulated in registers per micro-kernel step."""
    lanes = info.lanes
    if out_c % lanes == 0:
        vec_options = [v for v in (4, 2, 1) if (out_c // lanes) % v == 0]  # powers of two: see _vector_split
    else:
        vec_options = [0]  # channels not a multiple of the vector: one short vector of all of them (or a divisor)
    best, best_score = (1, _vector_split(out_c, lanes)), -1.0
    for v in vec_options:
        tc = v * lanes if v else _vector_split(out_c, lanes)
        nvec = v or 1
        for tw in _divisors(out_w):
            if tw > 8 or tw * nvec > info.max_accumulators:
                continue
            # Most accumulators first; then loads per FMA: (tw broadcasts + nvec weight loads) / (tw * nvec).
            score = tw * nvec - (tw + nvec) / (tw * nvec) / 10
            if score > best_score:
                best, best_score = (tw, tc), score
    return best


@_rule
def _conv_nhwc(sch: Any, info: CPUInfo, target: Any) -> bool:
    """One conv2d_nhwc/group_conv2d_nhwc block with injective producers (padding) and consumers (epilogue)."""
    matched = _match_conv(sch)
    if matched is None:
        return False
    block, spatial, reduce, before, after = matched
    epilogue = _inline_epilogue(sch, after)
    tiled = _tile_conv_loops(sch, spatial, reduce, info)
    if tiled is None:
        return False
    tile, wi, ci = tiled
    writer = _accumulate_in_registers(sch, block, epilogue, tile)
    if writer is None:
        return False
    # Vectorize/unroll before splitting off the init: the update block alone is no longer a reduction block.
    if wi is not None:
        sch.unroll(wi)
    sch.vectorize(ci)
    init = sch.decompose_reduction(block, reduce[0])
    _vectorize_innermost(sch, init, info.lanes)
    _vectorize_innermost(sch, writer, info.lanes)
    # Producers (the zero padding): their own parallel, vectorized loop nest.
    for b in before:
        _schedule_injective_block(sch, b.block_rv, info)
    return True


def _match_conv(sch: Any) -> tuple[Any, list[Any], list[Any], list[Any], list[Any]] | None:
    """(conv block, spatial loops, reduction loops, blocks before, blocks after), or None unless the kernel is
    exactly one NHWC conv (or a wide GEMM, _is_wide_gemm) whose other blocks are all injective."""
    infos = _blocks(sch)
    convs = [b for b in infos if b.name in ("conv2d_nhwc", "group_conv2d_nhwc", "matmul")]
    if len(convs) != 1:
        return None
    conv = convs[0]
    # Normalization dropped unit loops (batch 1, 1x1 kernels, depthwise's single input channel):
    # spatial loops are [N] [H] [W] C, then 1 to 3 reduction loops.
    loops, kinds = _loops_and_kinds(sch, conv.block_rv)
    ns = len(kinds) - len(kinds.lstrip("S"))
    if ns < 1 or set(kinds[ns:]) != {"R"}:
        return None
    if conv.name == "matmul" and not _is_wide_gemm(sch, loops[:ns]):
        return None
    idx = infos.index(conv)
    before, after = infos[:idx], infos[idx + 1:]
    if any(not b.is_injective() for b in before + after):
        return None
    return conv.block_rv, loops[:ns], loops[ns:], before, after


def _is_wide_gemm(sch: Any, spatial: list[Any]) -> bool:
    """A matmul [M, K] x [K, N] with M >= 8 rows and N >= 64 columns: a 1x1 conv over M pixels in all but name,
    which the conv tiling blocks in registers (ddddocr's [24, 1024] x [1024, 8224]: 5.6 ms vs 36.9 under the
    reduction rule). Batched and narrow matmuls stay with the reduction rule."""
    extents = [_extent(sch, loop) for loop in spatial]
    return len(extents) == 2 and None not in extents and extents[0] >= 8 and extents[1] >= 64


def _inline_epilogue(sch: Any, after: list[Any]) -> Any:
    """Inline all but the last consumer into it (bias add, BN, residual add, ReLU); that block, or None."""
    for b in after[:-1]:
        sch.compute_inline(b.block_rv)
    return after[-1].block_rv if after else None


def _tile_conv_loops(sch: Any, spatial: list[Any], reduce: list[Any],
                     info: CPUInfo) -> tuple[Any, Any, Any] | None:
    """Split W and C into `conv_tile` tiles, order the loops (outer tiles, reductions, tile), parallelize the
    outer loop. Returns (tile loop, pixel loop or None, channel loop), or None when an extent is symbolic."""
    c = spatial[-1]
    w = spatial[-2] if len(spatial) >= 2 else None
    others = spatial[:-2]
    out_c = _extent(sch, c)
    out_w = _extent(sch, w) if w is not None else 1
    if out_w is None or out_c is None:
        return None
    tw, tc = conv_tile(out_w, out_c, info)
    co, ci = sch.split(c, factors=[None, tc])
    if w is not None:
        wo, wi = sch.split(w, factors=[None, tw])
        sch.reorder(co, *others, wo, *reduce, wi, ci)
        outer = sch.fuse(co, *others)
        tile = wo
    else:
        wi = None
        sch.reorder(co, *reduce, ci)
        outer = tile = co
    if _extent(sch, outer) != 1:
        sch.parallel(outer)
    return tile, wi, ci


def _accumulate_in_registers(sch: Any, block: Any, epilogue: Any, tile: Any) -> Any:
    """Accumulate the tile in registers; write it back (through the epilogue) once per tile. Returns the
    write-back block, or None when there is no epilogue and the conv writes an intermediate buffer."""
    if epilogue is not None:
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(epilogue, tile)
        return epilogue
    if _output_is_param(sch, block):
        writer = sch.cache_write(block, 0, "local")  # the write-back block; `block` now writes the cache
        sch.reverse_compute_at(writer, tile)
        return writer
    return None


# ------------------------------------------------------------------------------------------- reductions
@_rule
def _single_reduction(sch: Any, info: CPUInfo, target: Any) -> bool:
    """One reduction block (pool, mean, matmul) with injective producers/consumers around it."""
    from tvm.s_tir.dlight import try_inline_contiguous_spatial

    infos = try_inline_contiguous_spatial(sch, _blocks(sch))
    reductions = [b for b in infos if not b.is_injective()]
    if len(reductions) != 1:
        return False
    red = reductions[0]
    loops, kinds = _loops_and_kinds(sch, red.block_rv)
    if "O" in kinds or "R" not in kinds or not kinds.startswith("S") or "RS" in kinds:
        return False
    idx = infos.index(red)
    before, after = infos[:idx], infos[idx + 1:]
    if len(after) > 1:
        return False
    spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
    reduce = [lp for lp, k in zip(loops, kinds) if k == "R"]
    inner_ext = _extent(sch, spatial[-1])
    if inner_ext is None:
        return False
    total = 1
    for lp in loops:
        total *= _extent(sch, lp) or 1
    factor = _vector_split(inner_ext, info.lanes, max_vectors=2) if inner_ext > 1 else 1
    vec_outer, vec_inner = sch.split(spatial[-1], factors=[None, factor])
    sch.reorder(*spatial[:-1], vec_outer, *reduce, vec_inner)
    outer_loops = [*spatial[:-1], vec_outer]
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    if total >= _PARALLEL_MIN and (_extent(sch, outer) or 1) > 1:
        sch.parallel(outer)
    if after:
        sch.set_scope(red.block_rv, 0, "local")
        sch.reverse_compute_at(after[0].block_rv, outer)
        _vectorize_innermost(sch, after[0].block_rv, info.lanes)
    if factor > 1:
        sch.vectorize(vec_inner)
    init = sch.decompose_reduction(red.block_rv, reduce[0])
    if factor > 1:
        _vectorize_innermost(sch, init, info.lanes)
    for b in before:
        _schedule_injective_block(sch, b.block_rv, info)
    return True


def _dlight(func: Any, info: CPUInfo, target: Any) -> Any:
    """dlight's own CPU rules (GEMV; softmax/norm-like reductions)."""
    from tvm.s_tir import dlight as dl

    for rule in (dl.cpu.GEMV(), dl.cpu.Reduction()):
        result = rule.apply(func, target, False)
        if result is not None:
            return result[0] if isinstance(result, list) else result
    return None


# ------------------------------------------------------------------------------------------- injective
@_rule
def _injective(sch: Any, info: CPUInfo, target: Any) -> bool:
    from tvm.s_tir.dlight import try_inline_contiguous_spatial

    infos = try_inline_contiguous_spatial(sch, _blocks(sch))
    if not infos or any(not b.is_injective() for b in infos):
        return False
    for b in infos:
        _schedule_injective_block(sch, b.block_rv, info)
    return True


def _schedule_injective_block(sch: Any, block: Any, info: CPUInfo) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents):
        return
    total = 1
    for e in extents:
        total *= e
    inner_ext = extents[-1]
    factor = _vector_split(inner_ext, info.lanes, max_vectors=4) if inner_ext > 1 else 1
    if factor > 1:
        outer_inner, vec = sch.split(loops[-1], factors=[None, factor])
        outer_loops = [*loops[:-1], outer_inner]
    else:
        vec, outer_loops = None, list(loops)
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    if total >= _PARALLEL_MIN and (_extent(sch, outer) or 1) > 1:
        sch.parallel(outer)
    if vec is not None:
        sch.vectorize(vec)
