"""LesionLocator forward floor on CPU: one network forward of the real ResEnc-L, eager vs faster variants.

Not part of the test suite. Issue 11 item 4: a warm prompt is within 1.05x of its bare network
forwards, so the only way left to a faster prompt on CPU is a faster forward. This times one
forward of the real architecture (the shared ResEnc-L plans, 102 M parameters, seeded random
weights written by ``generate_checkpoint``) on a real network input (the engine's own
preprocessing and prompt channel for a point prompt on the synthetic study), for:

* ``eager``: float32, the engine's default (``torch.inference_mode``);
* ``channels_last``: input and weights in ``torch.channels_last_3d``;
* ``mkldnn_off``: ``torch.backends.mkldnn.flags(enabled=False)`` (torch's own conv kernels), to see what
  oneDNN gives;
* ``mkldnn_weights``: ``torch.utils.mkldnn.to_mkldnn`` (Conv3d weights reordered once into oneDNN's
  blocked layout);
* ``onednn_weights``: the engine's own version of that (``engines.lesionlocator.onednn``: the same
  reordered weights, the modules and their state dicts unchanged so fold swaps still work); the
  engine's default on the CPU (``EngineSettings.extra["onednn_weights"]``);
* ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` (only when the CPU has avx512_bf16/amx);
* ``bf16_cl``: bf16 autocast plus channels-last;
* ``compile``: ``torch.compile`` (inductor, CPU; weights frozen); its compile time is reported apart;
* any of them at a thread count as ``name@T`` (``eager@1``); without ``@`` the ``--threads`` value.

Variants are interleaved (one forward of each per round, order rotated every round) so the shared
machine's load hits all of them alike; after one warm-up forward each, every round is timed, and the
table gives the median wall time, and the median CPU time of the process (all its threads): for
one thread that is the forward's own work, much less sensitive to the other jobs than the wall
time; with two threads it includes the time a thread spins waiting for the other. Agreement is
the share of voxels whose argmax (lesion vs background) equals the eager forward's on the same
input; >= 99.9 % is the bar for adopting a variant in the engine.

A full forward at the plans' 160x224x224 patch takes 35-90 s on the loaded 2-core machine, so the
default patch is reduced (``--patch 96 128 128``, divisible by the network's 2**5), the architecture
unchanged; ``--patch full`` uses the plans' patch::

    nice -n 5 .venv/bin/python benchmarks/lesionlocator_forward.py --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("eager", "eager@1", "channels_last", "mkldnn_off", "mkldnn_weights", "onednn_weights", "bf16", "bf16_cl",
            "compile")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def network_input(patch, size: str = "small"):
    """(engine, model, x): the engine's point-prompt input tile of shape ``patch`` on the synthetic study."""
    from napari_lesionlocator.core.prompts import PointPrompt
    from napari_lesionlocator.engines.base import EngineSettings
    from napari_lesionlocator.engines.lesionlocator import LesionLocatorEngine
    from napari_lesionlocator.engines.lesionlocator.generate import REAL_PLANS, generate_checkpoint
    from napari_lesionlocator.engines.lesionlocator.prompting import map_prompt
    from napari_lesionlocator.engines.lesionlocator.segmentation import plan_tiles, tile_input
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    tmp = Path(tempfile.mkdtemp(prefix="ll_fwd_"))
    try:
        root = generate_checkpoint(tmp, plans_path=REAL_PLANS, tiny=False, folds=(0,), parts=("point",))
        # the plain torch forward: the variants below start from it
        eng = LesionLocatorEngine(EngineSettings(checkpoint=str(root), folds=[0], tta=False,
                                                 extra={"onednn_weights": False}))
        model = eng.model("point")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    study = make_synthetic_study(seed=0, size=size)
    image, labels = study.images[0], study.labels[0].array
    ids = [int(v) for v in np.unique(labels) if v]
    lid = max(ids, key=lambda i: int((labels == i).sum()))
    c = np.round(np.argwhere(labels == lid).mean(axis=0)).astype(int)
    prompt = PointPrompt(lid, tuple(int(v) for v in c))
    pre = eng.preprocessed(image, "point")
    pp = map_prompt(prompt, pre)
    patch = tuple(int(v) for v in patch)
    starts, _, before = plan_tiles(pp, pre.new_shape, patch)
    x = tile_input(pre.data, pp, starts[0], patch, before, pre.origin, pre.new_shape)
    return eng, model, x


def make_variant(name: str, net, threads_default: int):
    """(forward(x) -> float32 logits, threads, setup seconds) for a variant name (``base@T``)."""
    import torch

    base, _, t = name.partition("@")
    threads = int(t) if t else threads_default
    t0 = time.perf_counter()
    cl = torch.channels_last_3d
    if base == "eager":

        def fwd(x):
            return net(x).float()
    elif base == "channels_last":
        m = copy.deepcopy(net).to(memory_format=cl)

        def fwd(x):
            return m(x.contiguous(memory_format=cl)).float().contiguous()
    elif base == "mkldnn_off":

        def fwd(x):
            with torch.backends.mkldnn.flags(enabled=False):
                return net(x).float()
    elif base == "mkldnn_weights":
        from torch.utils import mkldnn as mkldnn_utils

        m = mkldnn_utils.to_mkldnn(copy.deepcopy(net))

        def fwd(x):
            return m(x).float()
    elif base == "onednn_weights":
        from napari_lesionlocator.engines.lesionlocator.onednn import use_onednn_weights

        m = copy.deepcopy(net)
        use_onednn_weights(m)

        def fwd(x):
            return m(x).float()
    elif base in ("bf16", "bf16_cl"):
        m = copy.deepcopy(net).to(memory_format=cl) if base == "bf16_cl" else net

        def fwd(x):
            if base == "bf16_cl":
                x = x.contiguous(memory_format=cl)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x).float().contiguous()
    elif base == "compile":
        import torch._inductor.config as ic

        ic.freezing = True  # weights are constants: lets inductor prepack the oneDNN convolutions
        m = torch.compile(copy.deepcopy(net), backend="inductor", dynamic=False)

        def fwd(x):
            return m(x).float()
    else:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)} (optionally @threads)")
    return fwd, threads, time.perf_counter() - t0


def run_once(fwd, threads: int, x):
    import torch

    torch.set_num_threads(threads)
    with torch.inference_mode():
        c0, t0 = time.process_time(), time.perf_counter()
        out = fwd(x)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch", nargs="+", default=["96", "128", "128"],
                    help="z y x of the input tile (each divisible by 32), or 'full' for the plans' patch")
    ap.add_argument("--variants", nargs="+", default=None, help=f"default: all of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=2, help="threads for variants without @T")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (median over them)")
    ap.add_argument("--size", default="small", choices=("small", "realistic"), help="synthetic study size")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    import torch

    variants = list(args.variants or VARIANTS)
    if not cpu_has_bf16():
        dropped = [v for v in variants if v.startswith("bf16")]
        variants = [v for v in variants if not v.startswith("bf16")]
        if dropped:
            print(f"CPU without bf16 instructions: skipped {dropped}")
    if "eager" not in variants:
        variants.insert(0, "eager")
    t = time.perf_counter()
    eng, model, x_np = network_input([160, 224, 224] if args.patch == ["full"] else args.patch, args.size)
    x = torch.from_numpy(x_np)[None]
    net = model.network
    n_par = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"torch {torch.__version__}, CPU count {os.cpu_count()}, bf16 {cpu_has_bf16()}, "
          f"network {type(net).__name__} ({n_par:.2f} M parameters), input {tuple(x.shape)} "
          f"(plans' patch {model.patch_size}), set up in {time.perf_counter() - t:.0f} s", flush=True)

    fns, setup, first, times, cpus, masks, logit_diff = {}, {}, {}, {}, {}, {}, {}
    loads = [os.getloadavg()[0]]
    ref = None
    for v in variants:  # warm-up round (compile happens here)
        fwd, threads, s = make_variant(v, net, args.threads)
        dt, _, out = run_once(fwd, threads, x)
        fns[v], setup[v], first[v], times[v], cpus[v] = (fwd, threads), s, dt, [], []
        if v == "eager":
            ref = out
        masks[v] = (out[0, 1] > out[0, 0]).numpy()
        logit_diff[v] = None if ref is None else float((out - ref).abs().max())
        print(f"  warm-up {v:<16} {dt:7.1f} s (setup {s:.1f} s), load {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            fwd, threads = fns[v]
            dt, cpu, _ = run_once(fwd, threads, x)
            times[v].append(dt)
            cpus[v].append(cpu)
            print(f"  round {r + 1} {v:<16} {dt:7.1f} s (CPU {cpu:6.1f} s), load {os.getloadavg()[0]:.1f}",
                  flush=True)
        loads.append(os.getloadavg()[0])

    ref_mask = masks["eager"]
    base = statistics.median(times["eager"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        agree = float((masks[v] == ref_mask).mean())
        rows.append({"variant": v, "threads": fns[v][1], "median_s": med, "times_s": times[v],
                     "cpu_median_s": statistics.median(cpus[v]), "cpu_s": cpus[v],
                     "first_call_s": first[v], "setup_s": setup[v], "agreement": agree,
                     "max_abs_logit_diff": logit_diff[v], "speedup": base / med})
    print(f"\ninput {tuple(x.shape)} (plans' patch {model.patch_size}), lesion share of the eager mask "
          f"{ref_mask.mean() * 100:.1f} %, load average during the runs {min(loads):.1f}-{max(loads):.1f} "
          f"(1-min), {args.rounds} timed rounds after one warm-up\n")
    print("| variant | threads | s per forward (median) | all timed (s) | vs eager | CPU s per forward (median) "
          "| first call incl. compile (s) | argmax agreement with eager | max abs logit difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = "-" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.2g}"
        print(f"| {r['variant']} | {r['threads']} | {r['median_s']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['times_s'])} | {r['speedup']:.2f}x | {r['cpu_median_s']:.1f} | "
              f"{r['first_call_s'] + r['setup_s']:.1f} | {r['agreement'] * 100:.3f} % | {diff} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"input": list(x.shape), "loads": loads, "rows": rows}, indent=2))
    del eng
    return 0


if __name__ == "__main__":
    sys.exit(main())
