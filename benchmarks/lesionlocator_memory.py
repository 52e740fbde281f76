"""Peak memory of the LesionLocator engine on a large CT (default 600x512x512), network aside.

The network's own activations depend only on the patch size (one ResEnc-L forward at
160x224x224 needs ~11 GiB on CPU, see lesionlocator_speed.py); what grows with the scan is the
pipeline around it: reading, preprocessing/resampling, tile assembly and export. This benchmark
isolates that part with a generated *tiny* checkpoint (same code path as real weights) and prints
the peak RSS of each step, in a fresh subprocess per configuration, as a multiple of the input
volume's size.

    .venv/bin/python benchmarks/lesionlocator_memory.py [--shape 600 512 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt
from napari_lesionlocator.engines.base import EngineSettings, create_engine

shape, ckpt, mode, prepare = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
array = rng.standard_normal(size=shape, dtype=np.float32)
array *= 15
array += 40
c = [s // 2 for s in shape]
zz, yy, xx = np.ogrid[-16:17, -16:17, -16:17]  # the lesion, built locally (no full-size temporaries)
sub = array[c[0] - 16 : c[0] + 17, c[1] - 16 : c[1] + 17, c[2] - 16 : c[2] + 17]
sub[(zz / 12.0) ** 2 + (yy / 15.0) ** 2 + (xx / 15.0) ** 2 <= 1] = 120
image = Image(array, Geometry(tuple(shape), (1.0, 0.7, 0.7)), name="large")
del array
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
engine = create_engine("lesionlocator", EngineSettings(checkpoint=ckpt, folds=(0,), tta=False))
box = (c[0] - 12, c[0] + 13, c[1] - 15, c[1] + 16, c[2] - 15, c[2] + 16)
prompt = PointPrompt(1, tuple(c)) if mode == "point" else BoxPrompt(1, box)
t0 = time.perf_counter()
if prepare:
    engine.prepare(image)
result = engine.segment(image, [prompt])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": dt, "peak_gib": peak, "after_input_gib": base,
                  "voxels": int((result.labels.array == 1).sum())}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    from napari_lesionlocator.engines.lesionlocator.generate import generate_checkpoint

    shape = list(args.shape)
    input_gib = shape[0] * shape[1] * shape[2] * 4 / 2**30
    print(f"input: {shape} float32 = {input_gib:.2f} GiB; tiny generated checkpoint, 1 fold, TTA off")
    print("| prompt | image prepared first | RSS, input built (GiB) | peak RSS (GiB) | peak x input | time (s) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = generate_checkpoint(Path(tmp) / "ckpt", tiny=True, parts=("bbox", "point"))
        for mode, prepare in (("point", False), ("point", True), ("box", True)):
            payload = json.dumps([shape, str(ckpt), mode, prepare])
            proc = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {mode} | {'yes' if prepare else 'no'} | {res['after_input_gib']:.2f} | {res['peak_gib']:.2f} | "
                  f"{res['peak_gib'] / input_gib:.1f} | {res['seconds']:.1f} |", flush=True)
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
