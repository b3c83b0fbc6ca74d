"""Seconds per round: secure aggregation (SecAgg+) vs plaintext vs HE, side by side in one run.

Workload (issue 27's bar): 1M parameters (the finance MLP widened to 15-1024-960-1, 1,001,345
parameters, as ``he_round.py``), 10 and 100 sites, 0% and 30% dropout. Every party's compute is
measured in this one process, in the same run:

- local training: one site's round of the finance ``default`` job (200 Adam steps, batch 128) on
  synthetic rows, measured once (median of 3) and counted for every site (all sites train);
- plaintext: each site serialises its float32 update, the coordinator reads and averages them;
- secure aggregation: each site encodes (clip, fixed point) its update, then the whole protocol
  (``fedcore.secagg.simulate.run_round``: every message through its bytes; the dropped sites send
  their shares and then drop before their masked input, the costliest place to drop), and the
  coordinator decodes the sum;
- HE (the default BFV key set sized for the sites): each site encrypts, the coordinator parses and
  adds the ciphertexts, each site decrypts the sum (one encryption reused for every site).

``round_s``: every party's compute in turn on one machine, what a simulation of the round costs
(``n x training + n x the site's share of the aggregation + the coordinator``). ``parallel_s``: the
deployment view, sites in parallel: one training + the slowest site's aggregation work + the
coordinator's. No network, no Flower polling (a real round adds 3-4 round trips for SecAgg: keys,
shares, signatures, reveal; 1 for plaintext; 2 for HE with its confirmation). Bytes: per site per
round, sent and received. Set-up: a site's identity (once per federation) and the per-round key
steps (fresh keys and shares, steps 0-1).

    python benchmarks/secagg.py [--quick] [--sites 10,100] [--dropout 0,0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from _machine import machine

from fedcore.config.secagg import SecAggSpec
from fedcore.config.train import TrainConfig
from fedcore.secagg import Identity, Members, SecAggPolicy
from fedcore.secagg.job import encoder
from fedcore.secagg.simulate import run_round

RESULTS = Path(__file__).resolve().parent / "results" / "secagg.json"
HIDDEN = [1024, 960]
T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _training(quick: bool) -> tuple[float, int, np.ndarray]:
    """One site's local round (seconds, median of 3), the model size, and a real update."""
    import torch

    from fedcore.clients.trainer import train_steps
    from fedcore.models import build_model, get_arrays

    torch.set_num_threads(1)
    hidden = [64] if quick else HIDDEN
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 15)).astype(np.float32)
    y = (rng.random(20_000) < 0.05).astype(np.float32)
    cfg = TrainConfig(lr=0.003, batch_size=128, optimizer="adam", pos_weight=5.0)
    times, delta = [], np.zeros(0)
    for rep in range(3):
        model = build_model({"name": "mlp", "hidden": hidden}, 15, seed=rep)
        before = np.concatenate([a.ravel() for a in get_arrays(model)])
        _, dt = _timed(lambda m=model, r=rep: train_steps(m, x, y, cfg, steps=5 if quick else 200, seed=r))
        times.append(dt)
        delta = np.concatenate([a.ravel() for a in get_arrays(model)]) - before
    return statistics.median(times), delta.size, delta


def _plain(delta: np.ndarray, n: int, survivors: int) -> dict[str, float]:
    wire, t_site = _timed(lambda: delta.astype(np.float32).tobytes())

    def coordinator() -> np.ndarray:
        total = np.zeros(delta.size)
        for _ in range(survivors):
            total += 100.0 * np.frombuffer(wire, dtype=np.float32)
        return total / (100.0 * survivors)

    _, t_coord = _timed(coordinator)
    return {
        "site_s": t_site,
        "coordinator_s": t_coord,
        "sent_bytes": float(len(wire)),
        "received_bytes": float(len(wire)),
    }


def _secagg(delta: np.ndarray, n: int, dropped: int) -> dict[str, Any]:
    from fedcore.privacy.rng import secure_source

    spec = SecAggSpec(clipping_norm=1.01 * float(np.linalg.norm(delta)), weight="uniform")  # never clips
    enc = encoder(spec, n)
    ints, t_encode = _timed(lambda: enc.encode(delta, 1.0, secure_source()))
    words = enc.words(ints)
    ids = {f"site{i:03d}": Identity.generate(f"site{i:03d}") for i in range(n)}
    members = Members.of({s: i.public_key for s, i in ids.items()})
    sites = {s: (SecAggPolicy(members, threshold=2), i) for s, i in ids.items()}
    gone = set(sorted(sites)[:dropped])
    (total, state, stats), wall = _timed(
        lambda: run_round(
            sites, {s: words for s in sites}, drop={"masked": gone}, modulus_bits=spec.modulus_bits
        )
    )
    (values, weight), t_decode = _timed(lambda: enc.decode(total, survivors=len(state.survivors)))
    ok = bool(np.max(np.abs(values / weight - delta)) <= 1 / enc.point.scale)
    per_site = [sum(v.values()) for v in stats.site_seconds.values()]
    setup = [v.get("keys", 0.0) + v.get("shares", 0.0) for v in stats.site_seconds.values()]
    return {
        "site_s": t_encode + statistics.mean(per_site),
        "site_max_s": t_encode + max(per_site),
        "site_protocol_s": statistics.mean(per_site),
        "site_setup_s": statistics.mean(setup),
        "encode_s": t_encode,
        "coordinator_s": stats.server_seconds + t_decode,
        "sent_bytes": float(np.mean(list(stats.sent.values()))),
        "received_bytes": float(np.mean(list(stats.received.values()))),
        "graph_degree": n - 1,
        "share_threshold": int(state.advertisements[0].share_threshold),
        "survivors": len(state.survivors),
        "correct": ok,
        "wall_s": wall,
    }


def _he(delta: np.ndarray, n: int, survivors: int) -> dict[str, Any]:
    from fedcore.he import EncryptedUpdate, decrypt_mean, encrypt_update, generate_keyset
    from fedcore.he.params import params_for_sites
    from fedcore.he.update import RunningSum

    ctx = generate_keyset(params_for_sites(1 << (n - 1).bit_length()))
    pub = ctx.public()
    clipped = np.clip(delta, -0.5, 0.5)
    wire, t_enc = _timed(lambda: encrypt_update(ctx, (clipped,), weight=1.0).to_bytes())

    def coordinator() -> bytes:
        running = RunningSum(pub)
        for _ in range(survivors):
            running.add(EncryptedUpdate.from_bytes(wire))
        return running.result().to_bytes()

    down, t_sum = _timed(coordinator)
    (mean,), t_dec = _timed(lambda: decrypt_mean(ctx, EncryptedUpdate.from_bytes(down)))
    return {
        "site_s": t_enc + t_dec,
        "coordinator_s": t_sum,
        "sent_bytes": float(len(wire)),
        "received_bytes": float(len(down)),
        "correct": bool(np.max(np.abs(mean - clipped)) < 1e-4),
    }


def _round(train_s: float, n: int, part: dict[str, Any]) -> tuple[float, float]:
    site = part["site_s"]
    return n * (train_s + site) + part["coordinator_s"], train_s + part.get("site_max_s", site) + part[
        "coordinator_s"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small MLP, 5 local steps")
    parser.add_argument("--sites", default="10,100")
    parser.add_argument("--dropout", default="0,0.3")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load0 = os.getloadavg()
    identity, t_identity = _timed(lambda: Identity.generate("site"))
    train_s, params, delta = _training(args.quick)
    print(f"local training: {train_s:.2f} s per site per round, {params:,} parameters", file=sys.stderr)
    _secagg(delta[:1000], 3, 0)  # warm-up: galois compiles its field arithmetic once per process
    rows = []
    for n in (int(s) for s in args.sites.split(",")):
        for drop in (float(d) for d in args.dropout.split(",")):
            dropped = round(drop * n)
            parts = {"plaintext": _plain(delta, n, n - dropped), "secagg": _secagg(delta, n, dropped),
                     "he": _he(delta, n, n - dropped)}  # fmt: skip
            row: dict[str, Any] = {"sites": n, "dropout": drop, "params": params, "train_s": train_s, **parts}
            for part in parts.values():
                part["round_s"], part["parallel_s"] = _round(train_s, n, part)
            for name in ("secagg", "he"):
                row[f"{name}_ratio"] = parts[name]["round_s"] / parts["plaintext"]["round_s"]
                row[f"{name}_parallel_ratio"] = parts[name]["parallel_s"] / parts["plaintext"]["parallel_s"]
            rows.append(row)
            sa, he = parts["secagg"], parts["he"]
            print(
                f"{n:4d} sites {drop:4.0%}: plaintext {parts['plaintext']['round_s']:8.1f} s, secagg "
                f"{sa['round_s']:8.1f} s ({row['secagg_ratio']:.3f}x; "
                f"parallel {row['secagg_parallel_ratio']:.2f}x), HE {he['round_s']:8.1f} s "
                f"({row['he_ratio']:.3f}x; parallel {row['he_parallel_ratio']:.2f}x); "
                f"secagg coordinator {sa['coordinator_s']:.2f} s",
                file=sys.stderr,
            )
    report = {
        "doc": __doc__,
        "machine": machine(load_average_start=load0, load_average_end=os.getloadavg()),
        "quick": args.quick,
        "setup": {"identity_s": t_identity, "identity_public_bytes": len(identity.public_key)},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
