"""Latency and memory of the classical engine on a realistic CT grid (about 300 x 512 x 512).

Run::

    .venv/bin/python benchmarks/latency.py               # 2 threads, synthetic study "realistic"
    .venv/bin/python benchmarks/latency.py --repeat 5 --threads 2

Targets: a point or box prompt to a mask in <= 0.5 s on 2 CPU cores; one lesion tracked to one
follow-up in <= 10 s (the new-lesion candidate search, once per follow-up, is timed on its own
row); peak extra memory within 2x the input volume. Memory is measured two ways:
``tracemalloc`` (numpy/Python allocations) and the process's resident set (``/proc/self/statm``
polled every 2 ms, which also sees SimpleITK's buffers), both as the increase over the
level before the call.

Times vary with machine load: on a shared machine rerun when it is quiet; the table prints
the median and the minimum of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import tracemalloc

import numpy as np

from napari_lesionlocator.core.image import LabelMap
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt
from napari_lesionlocator.engines.base import EngineSettings
from napari_lesionlocator.engines.classical import ClassicalEngine

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRss:
    """Context manager: peak RSS increase (bytes) over the level at entry, polled in a thread."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.base


def measure(fn, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    with PeakRss() as rss:
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "tracemalloc_MB": peak / 2**20,
            "rss_MB": rss.delta / 2**20, "out": out}


def gt_prompts(mask: np.ndarray, lid: int):
    idx = np.argwhere(mask)
    c = idx.mean(axis=0)
    inside = idx[np.argmin(((idx - c) ** 2).sum(axis=1))]
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return PointPrompt(lid, tuple(int(v) for v in inside)), BoxPrompt(lid, (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]))


def _print_rows(rows) -> None:
    print("| operation | median s | min s | peak tracemalloc MB | peak RSS increase MB | note |")
    print("|---|---|---|---|---|---|")
    for name, m, note in rows:
        print(f"| {name} | {m['median_s']:.3f} | {m['min_s']:.3f} | {m['tracemalloc_MB']:.0f} | "
              f"{m['rss_MB']:.0f} | {note} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-only", action="store_true", help="skip the point/box prompts")
    ap.add_argument("--segment-only", action="store_true", help="time the point and box prompts only (no tracking)")
    args = ap.parse_args(argv)

    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    t0 = time.perf_counter()
    study = make_synthetic_study(seed=args.seed, size="realistic")
    print(f"synthetic study (realistic) made in {time.perf_counter() - t0:.1f} s")
    image, labels, follow = study.images[0], study.labels[0], study.images[1]
    vol_mb = image.array.nbytes / 2**20
    print(f"baseline {image.shape} {image.array.dtype} spacing {image.geometry.spacing} = {vol_mb:.0f} MB; "
          f"follow-up {follow.shape}; threads={args.threads}; repeat={args.repeat}; cpus={os.cpu_count()}\n")
    engine = ClassicalEngine(EngineSettings(threads=args.threads))
    engine.prepare(image)

    rows = []
    for rec in [] if args.tracking_only else study.lesions:
        mask = labels.array == rec.id
        if not mask.any():
            continue
        point, box = gt_prompts(mask, rec.id)
        for kind, prompt in (("point", point), ("box", box)):
            m = measure(lambda p=prompt: engine.segment(image, [p]), args.repeat)
            res = m.pop("out")
            pred = res.labels.array == rec.id
            dice = 2 * (pred & mask).sum() / max(1, pred.sum() + mask.sum())
            rows.append((f"segment {kind} lesion {rec.id} ({rec.kind}, {rec.diameter_mm:.0f} mm)", m,
                         f"Dice {dice:.3f}, load {os.getloadavg()[0]:.1f}"))

    if args.segment_only:
        _print_rows(rows)
        seg = [m for _, m, _ in rows]
        print(f"\nworst prompt median {max(s['median_s'] for s in seg):.3f} s (target 0.5 s); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        return 0

    from napari_lesionlocator.engines.classical.track import track_lesions

    one = LabelMap((labels.array == 1).astype(np.uint16), labels.geometry)
    truth = study.labels[1].array == 1
    m = measure(lambda: track_lesions(image, one, follow, candidates=False), max(1, args.repeat // 2))
    res = m.pop("out")
    pred = res.labels.array == 1
    dice = 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())
    rows.append(("track 1 lesion to 1 follow-up", m, f"Dice {dice:.3f}"))
    # What engine.track adds once per follow-up: the new-lesion candidate search.
    m = measure(lambda: engine.track(image, one, follow), 1)
    res = m.pop("out")
    gt7 = study.labels[1].array == 7
    c7 = np.argwhere(gt7).mean(axis=0)
    rank = next((k + 1 for k, c in enumerate(res.new_candidates)
                 if all(c["box"][2 * a] <= c7[a] < c["box"][2 * a + 1] for a in range(3))), None)
    rows.append(("track 1 lesion + new-lesion search (once per follow-up)", m,
                 f"new lesion 7 rank {rank} of {len(res.new_candidates)}"))

    _print_rows(rows)
    seg = [m for name, m, _ in rows if name.startswith("segment")]
    trk = rows[-2][1]
    print(f"\ninput volume {vol_mb:.0f} MB (memory budget 2x = {2 * vol_mb:.0f} MB)")
    print(f"worst prompt median {max((s['median_s'] for s in seg), default=float('nan')):.3f} s (target 0.5 s); "
          f"tracking median {trk['median_s']:.2f} s (target 10 s)")
    worst_mem = max(max(s["tracemalloc_MB"], s["rss_MB"]) for s in [*seg, trk, rows[-1][1]])
    print(f"worst peak memory increase {worst_mem:.0f} MB = {worst_mem / vol_mb:.2f}x the input volume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
