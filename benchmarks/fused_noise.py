"""Prototype, not library code: what a compiled (fused) secure noise sampler would buy DP-SGD.

fedcore's secure sampler (``fedcore.privacy.rng.Source._sum_of_four32``) is numpy: each polar try
costs ~14 passes over memory (keystream, coordinates, s, the kept mask, log, sqrt, products, the
selection), and keeps an MLP 256-256 DP epoch above issue 14's bar of 1.5x plain (figures:
``docs/benchmarks.md``). This script measures the alternative a planning decision would weigh: the same
algorithm (same AES-256-CTR keystream, Marsaglia's polar method on 24-bit coordinates, sum of four
/ 2, kept tries used in keystream order) with the per-try arithmetic in one C loop, compiled here
with gcc and vectorised with glibc's libmvec. It is built in a temporary folder and loaded with
ctypes; nothing in ``fedcore`` uses it.

It reports, in one run: the keystream rate; normals/s of both samplers (float32, sum of four) and
their distance to N(0, 1) (Kolmogorov-Smirnov on 4M values, mean, variance, kurtosis); and the
MLP 256-256 DP epoch with each sampler against the fair plain loop of ``dp_overhead.py`` (CPU
seconds, torch on 1 thread, paired repeats, order rotating), i.e. the ratio either would give.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/fused_noise.py [--quick] [--out DIR]``; needs gcc.
Writes ``benchmarks/results/fused_noise.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine
from dp_overhead import _dp, finance, plain_manual

from fedcore.clients.trainer import TrainConfig
from fedcore.models import build_model
from fedcore.privacy.dpsgd import DpSgdConfig, plan_dpsgd
from fedcore.privacy.rng import AesCtrStream, Source, secure_source

KERNEL = r"""
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define BLK 512

/* Polar tries from pairs of 32-bit keystream words (u from w[2i], v from w[2i + 1]: 24-bit signed
   coordinates in [-1, 1), exact in float). Writes (u + v) sqrt(-2 ln s / s) of every kept try
   (0 < s < 1), in try order, to t (room for m values); returns how many were kept. */
size_t polar_kept(const int32_t *w, size_t m, float *t) {
    size_t j = 0;
    float val[BLK];
    int keep[BLK];
    for (size_t i0 = 0; i0 < m; i0 += BLK) {
        size_t n = m - i0 < BLK ? m - i0 : BLK;
        const int32_t *p = w + 2 * i0;
#pragma omp simd
        for (size_t k = 0; k < n; k++) {
            float u = (float)(p[2 * k] >> 8) * 0x1p-23f;
            float v = (float)(p[2 * k + 1] >> 8) * 0x1p-23f;
            float s = u * u + v * v;
            int ok = (s < 1.0f) & (s > 0.0f);
            float sl = ok ? s : 0.5f; /* rejected tries: any finite value, discarded below */
            val[k] = (u + v) * sqrtf(-2.0f * logf(sl) / sl);
            keep[k] = ok;
        }
        for (size_t k = 0; k < n; k++) { /* branch-free selection */
            t[j] = val[k];
            j += (size_t)keep[k];
        }
    }
    return j;
}
"""
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-shared"]


def build_kernel(folder: Path) -> ctypes.CDLL:
    src, lib = folder / "polar.c", folder / "polar.so"
    src.write_text(KERNEL)
    subprocess.run(["gcc", *FLAGS, str(src), "-o", str(lib), "-lmvec", "-lm"], check=True)
    symbols = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
    if "_ZGV" not in symbols:
        print("note: logf was not vectorised (no libmvec call in the kernel)")
    dll = ctypes.CDLL(str(lib))
    dll.polar_kept.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    dll.polar_kept.restype = ctypes.c_size_t
    return dll


def fused_sum_of_four32(dll: ctypes.CDLL) -> Any:
    """A drop-in for ``Source._sum_of_four32`` whose polar tries run in ``dll``."""

    def fill(self: Source, out: NDArray[np.float32], std: float) -> None:
        assert self.stream is not None
        pairs, got, parts = 2 * len(out), 0, []
        while got < pairs:
            want = pairs - got
            m = int(want * (4 / math.pi) + 4 * math.sqrt(want) + 16)
            if self._scratch.size < m + 2:
                self._scratch = np.empty(m + 2, dtype=np.uint64)
            words = self.stream.words(m, self._scratch)  # m words = m (u, v) pairs of 32 bits
            t = np.empty(m, dtype=np.float32)
            k = dll.polar_kept(words.ctypes.data, m, t.ctypes.data)
            parts.append(t[:k])
            got += k
        both = parts[0] if len(parts) == 1 else np.concatenate(parts)
        half = pairs // 2
        np.add(both[:half], both[half:pairs], out=out)
        out *= np.float32(0.5 * std)

    return fill


def rates(source: Source, seconds: float) -> dict[str, float]:
    """Keystream words/s, and float32 sum-of-four normals/s of ``source`` (best of ~``seconds``)."""
    stream, n = AesCtrStream(), 1 << 20
    buf, out = np.empty(n + 2, dtype=np.uint64), torch.empty(n, dtype=torch.float32)
    best_w = best_n = math.inf
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        stream.words(n, buf)
        best_w = min(best_w, time.perf_counter() - t)
        t = time.perf_counter()
        source.noise_(out, 1.0)
        best_n = min(best_n, time.perf_counter() - t)
    return {"keystream_words_per_s": n / best_w, "normals_per_s": n / best_n}


def quality(source: Source, n: int) -> dict[str, float]:
    z = source.noise_(torch.empty(n, dtype=torch.float32), 1.0).numpy().astype(np.float64)
    ks = stats.kstest(z, "norm")
    return {
        "n": n,
        "mean": float(z.mean()),
        "var": float(z.var()),
        "kurtosis": float(stats.kurtosis(z, fisher=False)),
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "max_abs": float(np.abs(z).max()),
    }


def epochs(repeats: int, rows: int, fused: Any) -> dict[str, Any]:
    """MLP 256-256: plain-manual, DP with the numpy sampler, DP with the fused one; paired."""
    x, y = finance(rows)
    cfg = TrainConfig(lr=0.05, batch_size=256)
    steps = -(-len(x) // cfg.batch_size)
    plan = plan_dpsgd(
        DpSgdConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1.0),
        num_examples=len(x),
        batch_size=cfg.batch_size,
        rounds=1,
        local_steps=steps,
    )
    numpy_fill = Source._sum_of_four32

    def dp_with(fill: Any) -> Any:
        def run(m: torch.nn.Module, r: int) -> None:
            Source._sum_of_four32 = fill  # type: ignore[method-assign]
            try:
                _dp(m, x, y, cfg, plan, steps, "linear")
            finally:
                Source._sum_of_four32 = numpy_fill  # type: ignore[method-assign]

        return run

    loops = {
        "plain-manual": lambda m, r: plain_manual(m, x, y, cfg, steps, r),
        "dp-numpy-sampler": dp_with(numpy_fill),
        "dp-fused-sampler": dp_with(fused),
    }
    runs: dict[str, list[float]] = {k: [] for k in loops}
    keys = list(loops)
    for r in range(repeats + 1):  # pass 0 is warm-up; the order rotates
        for key in keys[r % 3 :] + keys[: r % 3]:
            model = build_model({"name": "mlp", "hidden": [256, 256]}, x.shape[1], seed=0)
            c = time.process_time()
            loops[key](model, r)
            if r:
                runs[key].append(time.process_time() - c)
    out: dict[str, Any] = {"steps_per_epoch": steps, "rows": rows, "runs_s": runs}
    out["median_epoch_s"] = {k: statistics.median(v) for k, v in runs.items()}
    for key in ("dp-numpy-sampler", "dp-fused-sampler"):
        paired = [d / p for d, p in zip(runs[key], runs["plain-manual"], strict=True)]
        out[key] = {"ratio": statistics.median(paired), "ratio_min": min(paired), "ratio_max": max(paired)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, fewer rows (development only)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        sys.exit("fused_noise.py needs gcc to build the prototype kernel")
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        dll = build_kernel(Path(tmp))
        fused = fused_sum_of_four32(dll)
        numpy_src, fused_src = secure_source(), secure_source()
        fused_src._sum_of_four32 = fused.__get__(fused_src)  # type: ignore[method-assign]
        seconds = 1.0 if args.quick else 3.0
        r_numpy, r_fused = rates(numpy_src, seconds), rates(fused_src, seconds)
        limit = r_numpy["keystream_words_per_s"] / (2 * 4 / math.pi)  # words per value: 2 kept tries
        sampler = {
            "keystream_words_per_s": r_numpy["keystream_words_per_s"],
            "keystream_limit_normals_per_s": limit,
            "numpy_normals_per_s": r_numpy["normals_per_s"],
            "fused_normals_per_s": r_fused["normals_per_s"],
            "fused_vs_numpy": r_fused["normals_per_s"] / r_numpy["normals_per_s"],
            "numpy_vs_keystream_limit": r_numpy["normals_per_s"] / limit,
            "fused_vs_keystream_limit": r_fused["normals_per_s"] / limit,
        }
        n = 1 << 20 if args.quick else 1 << 22
        dist = {"numpy": quality(numpy_src, n), "fused": quality(fused_src, n)}
        epoch = epochs(2 if args.quick else 7, 20_000 if args.quick else 100_000, fused)
    print(f"keystream limit {limit / 1e6:.0f} M values/s (sum of four, float32)")
    for key in ("numpy", "fused"):
        d = dist[key]
        print(
            f"{key:6} sampler {sampler[f'{key}_normals_per_s'] / 1e6:6.1f} M/s "
            f"({sampler[f'{key}_vs_keystream_limit']:.2f} of the limit); KS {d['ks_statistic']:.5f} "
            f"(p {d['ks_pvalue']:.2f}), var {d['var']:.4f}, kurtosis {d['kurtosis']:.3f}"
        )
    plain = epoch["median_epoch_s"]["plain-manual"]
    print(f"MLP 256-256 epoch: plain-manual {plain:.3f} s")
    for key in ("dp-numpy-sampler", "dp-fused-sampler"):
        e = epoch[key]
        print(
            f"  {key:17} {epoch['median_epoch_s'][key]:.3f} s  ratio {e['ratio']:.2f} "
            f"({e['ratio_min']:.2f}-{e['ratio_max']:.2f})"
        )
    meta = {
        "machine": machine(torch=torch.__version__, numpy=np.__version__),
        "gcc_flags": FLAGS,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "quick": args.quick,
        "note": "prototype: the fused kernel is built here and not used by fedcore",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fused_noise.json"
    result = {"meta": meta, "sampler": sampler, "distribution": dist, "mlp_256_256": epoch}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
