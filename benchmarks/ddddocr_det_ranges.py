"""ddddocr-det int8 variants: which of edgec's calibration choices costs mAP@0.5 (one process, the samples of
benchmarks/zoo_accuracy.py: 64 calibration, 64 search, 200 labelled held-out captchas). Run by hand:
`python -m benchmarks.ddddocr_det_ranges`; results in benchmarks/results/ddddocr-det-ranges-2026-12-05-amd-epyc.txt."""
from __future__ import annotations

import time

import numpy as np

from benchmarks import zoo_accuracy as za

VARIANTS = (("minmax, nearest, no search", dict(calibration_method="minmax", weight_rounding="nearest", range_search=0)),
            ("percentile, nearest, no search", dict(weight_rounding="nearest", range_search=0)),
            ("default (percentile, gptq, search 64)", {}),
            ("minmax, gptq, no search", dict(calibration_method="minmax", range_search=0)),
            ("minmax, nearest, search 64", dict(calibration_method="minmax", weight_rounding="nearest")),
            ("percentile, gptq, no search", dict(range_search=0)))


def main() -> None:
    import edgec

    b = za.zoo_bench("ddddocr-det", 200)
    task = b.task
    fp32 = za._ort_runner(b.onnx)
    ref = [task.prepare(fp32(f)) for f in b.held]
    base = task.score(ref, b.held_truth)
    data = {k: np.stack([f[k] for f in b.calib]) for k in b.calib[0]}
    data.update({f"val_{k}": np.stack([f[k] for f in b.search]) for k in b.search[0]})
    for name, kw in VARIANTS:
        t0 = time.time()
        build = edgec.compile(str(b.onnx), "intel-cpu", "int8", calibration=data, input_shapes=b.shapes,
                              output_dir=f"/tmp/ddd-{len(name)}-{hash(name) & 0xffff}", profile_runs=5,
                              progress=False, use_cache=False, accept_inaccurate=True, **kw)
        run = za._ov_runner(za._ov_compiled(str(build.output_dir / "model.xml")))
        cand = [task.prepare(run(f)) for f in b.held]
        print(f"{name:38} mAP {task.score(cand, b.held_truth):.2f} (fp32 {base:.2f}) "
              f"guard={'int8_guard' in build.report} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
