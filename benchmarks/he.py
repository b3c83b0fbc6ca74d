"""Benchmark HE aggregation: fedcore's default key set against NVFlare's default CKKS context.

Run ``python benchmarks/he.py`` (10k, 1M, 10M parameters) or ``--quick`` (10k, 1M). Writes
``benchmarks/results/he.json`` and prints a table. See DEFINITIONS below for every number.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from _machine import machine

from fedcore.he import (
    DEFAULT_PARAMS,
    NVFLARE_DEFAULT_PARAMS,
    EncryptedUpdate,
    HEParams,
    decrypt_mean,
    encrypt_update,
    generate_keyset,
    sum_encrypted,
)

NUM_SITES = 10
RESULTS = Path(__file__).resolve().parent / "results" / "he.json"
DEFINITIONS = {
    "bytes_per_param": "wire bytes of one site's encrypted update (EncryptedUpdate.to_bytes, "
    "header included) / (4 * num_params): a multiple of the float32 size; 1.0 = plain float32",
    "download_bytes_per_param": "same, for the encrypted sum sent back to each site",
    "encrypt_params_per_s": "num_params / seconds for one site to encrypt and serialize its update",
    "aggregate_params_per_s": f"num_params / seconds for the coordinator to parse {NUM_SITES} "
    "sites' updates, add them and serialize the sum",
    "decrypt_params_per_s": "num_params / seconds for one site to parse, decrypt and average",
    "round_ratio": f"HE round / plaintext round, compute only, all parties on one machine. HE round"
    f" = {NUM_SITES} x (encrypt + serialize) + coordinator (parse {NUM_SITES}, sum, serialize) + "
    "one site (parse, decrypt, divide). Plaintext round = "
    f"{NUM_SITES} x serialize float32 + coordinator (deserialize {NUM_SITES}, weighted sum, "
    "serialize) + one site (deserialize, divide). No network, no Flower; the lead will replace "
    "this with a full Flower round",
    "max_abs_error": "max |decrypted HE mean - float64 plaintext weighted mean| over all params",
    "peak_rss_mb": "process peak resident memory so far (cumulative over the run)",
    "distinct_site_updates": "updates actually encrypted; the 10 sites reuse them cyclically when "
    "fewer than 10 (the coordinator's work is the same), to keep 10M params feasible",
}

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _plain_round(updates: list[np.ndarray], weights: list[float]) -> float:
    t0 = time.perf_counter()
    wire = [u.astype(np.float32).tobytes() for u in updates]
    total = np.zeros(updates[0].size, dtype=np.float64)
    for w, b in zip(weights, wire, strict=True):
        total += w * np.frombuffer(b, dtype=np.float32)
    down = total.astype(np.float32).tobytes()
    _ = np.frombuffer(down, dtype=np.float32) / sum(weights)
    return time.perf_counter() - t0


def _case(params: HEParams, n: int, rng: np.random.Generator) -> dict[str, Any]:
    ctx = generate_keyset(params)
    pub = ctx.public()
    distinct = NUM_SITES if n <= 1_000_000 else 2
    updates = [rng.uniform(-1.0, 1.0, n) for _ in range(distinct)]
    weights = [(k + 1) / NUM_SITES for k in range(distinct)]
    wires, t_enc = [], 0.0
    for k, u in enumerate(updates):
        wire, dt = _timed(lambda u=u, k=k: encrypt_update(ctx, (u,), weight=weights[k]).to_bytes())
        wires.append(wire)
        t_enc += dt
    t_enc /= distinct
    site_wires = [wires[k % distinct] for k in range(NUM_SITES)]
    down, t_agg = _timed(
        lambda: sum_encrypted(pub, [EncryptedUpdate.from_bytes(w) for w in site_wires]).to_bytes()
    )
    (mean,), t_dec = _timed(lambda: decrypt_mean(ctx, EncryptedUpdate.from_bytes(down)))
    site_updates = [updates[k % distinct] for k in range(NUM_SITES)]
    site_weights = [weights[k % distinct] for k in range(NUM_SITES)]
    expected = sum(w * u for w, u in zip(site_weights, site_updates, strict=True))
    expected /= sum(site_weights)
    t_plain = _plain_round(site_updates, site_weights)
    he_round = NUM_SITES * t_enc + t_agg + t_dec
    return {
        "num_params": n,
        "num_sites": NUM_SITES,
        "distinct_site_updates": distinct,
        "num_ciphertexts": EncryptedUpdate.from_bytes(wires[0]).num_ciphertexts,
        "bytes_per_param": len(wires[0]) / (4 * n),
        "download_bytes_per_param": len(down) / (4 * n),
        "encrypt_params_per_s": n / t_enc,
        "aggregate_params_per_s": n / t_agg,
        "decrypt_params_per_s": n / t_dec,
        "he_round_s": he_round,
        "plain_round_s": t_plain,
        "round_ratio": he_round / t_plain,
        "max_abs_error": float(np.max(np.abs(mean - expected))),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _table(results: dict[str, Any]) -> str:
    cols = [
        "num_params",
        "bytes_per_param",
        "encrypt_params_per_s",
        "aggregate_params_per_s",
        "round_ratio",
        "max_abs_error",
        "peak_rss_mb",
    ]
    lines = [f"{'config':<16}" + "".join(f"{c:>24}" for c in cols)]
    for name, block in results.items():
        for row in block["results"]:
            cells = "".join(f"{row[c]:>24,}" if c == "num_params" else f"{row[c]:>24.4g}" for c in cols)
            lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 1M parameters only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [10_000, 1_000_000] if args.quick else [10_000, 1_000_000, 10_000_000]
    configs = {"fedcore_default": DEFAULT_PARAMS, "nvflare_default": NVFLARE_DEFAULT_PARAMS}
    results: dict[str, Any] = {}
    for name, params in configs.items():
        rng = np.random.default_rng(0)
        rows = []
        for n in sizes:
            rows.append(_case(params, n, rng))
            print(f"{name} {n:,}: done", file=sys.stderr, flush=True)
        results[name] = {"params": params.to_dict(), "results": rows}
    print(_table(results))
    report = {
        "definitions": DEFINITIONS,
        "machine": machine(),
        "quick": args.quick,
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
