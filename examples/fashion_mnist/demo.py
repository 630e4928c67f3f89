"""`make demo`: compile the bundled Fashion-MNIST ResNet-8 for this CPU (OpenVINO), check it, profile it.

The model was trained here by train.py (91.4% test accuracy); weights ship as resnet8_fmnist.pt and
calibration/fashion-mnist-samples.npz (shipped with edgec) holds 512 calibration images plus 1,000 labelled
test images.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from model import ResNet8  # noqa: E402

import edgec  # noqa: E402
from edgec.shipped import shipped  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    model = ResNet8()
    model.load_state_dict(torch.load(HERE / "resnet8_fmnist.pt", weights_only=True))
    build = edgec.compile(model, target="intel-cpu", precision="fp32",
                          example_inputs=(torch.zeros(1, 1, 28, 28),),
                          calibration=shipped("calibration") / "fashion-mnist-samples.npz",
                          output_dir=Path("edgec-out") / "fashion-mnist-intel-cpu")
    profile = edgec.Profile.from_json(build.report["profile"])
    print()
    print(profile.table())
    acc = build.report["accuracy"]
    lab = acc.get("labelled", {})
    print()
    print(f"accuracy on {acc['samples']} labelled test images: {lab.get('value', float('nan')):.2f}% "
          f"(PyTorch-exported fp32 reference {lab.get('reference', float('nan')):.2f}%), "
          f"top-1 agreement {100 * acc['top1_agreement']:.2f}%, max abs error {acc['max_abs_error']:.2e}")
    files = ["manifest.json"] + [f["path"] for f in build.manifest["files"]]
    print(f"output folder: {build.output_dir}/  ({', '.join(files)})")
    print(f"report: {build.output_dir / 'report.html'}")


if __name__ == "__main__":
    main()
