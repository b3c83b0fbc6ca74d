"""Benchmark the SecAgg+ core (no Flower, no network): compute and bytes per site per round.

Run ``python benchmarks/secagg_core.py`` (1M parameters; 10 and 100 sites on the complete graph,
100 on a sparse graph; 0% and 30% dropout) or ``--quick`` (10k parameters). Writes
``benchmarks/results/secagg_core.json`` and prints a table. Every party runs in this one process,
in turn (``fedcore.secagg.simulate.run_round``), every message through ``to_bytes``/``from_bytes``.
See DEFINITIONS for every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine

from fedcore.secagg import Identity, Members, SecAggPolicy, proposed_degree
from fedcore.secagg.simulate import run_round

RESULTS = Path(__file__).resolve().parent / "results" / "secagg_core.json"
STEPS = ("keys", "shares", "masked", "signatures", "unmask")
DEFINITIONS = {
    "client_s": "mean seconds per site per step, over the sites that ran it: keys = fresh X25519 keys "
    "+ signed advertisement; shares = verify every advertisement + Shamir-split the self-mask seed and "
    "the mask key (galois GF(2^25 - 39), one matrix product for both) + AES-GCM per neighbour; "
    "masked = open the shares + AES-CTR masks (self + one per neighbour); signatures = check and sign "
    "the survivor set; unmask = verify the quorum's signatures + pick the shares to reveal",
    "client_total_s": "sum of client_s: one site's compute in one round",
    "server_s": "coordinator seconds in the round: relaying, summing masked inputs, Shamir-combining "
    "every survivor's seed and every dropped site's mask key, and removing those masks",
    "sent_bytes / received_bytes": "mean wire bytes per site per round (to_bytes of every message), "
    "over all participants, the dropped ones included (a survivor sends its masked input plus the "
    "small messages)",
    "dropout": "fraction of sites that sent their shares, then dropped before sending a masked input "
    "(the costliest place to drop: their mask keys are reconstructed and their masks removed)",
    "correct": "the unmasked sum equals the plaintext sum of the survivors' inputs",
}


def federation(n: int, sparse: bool) -> dict[str, tuple[SecAggPolicy, Identity]]:
    ids = {f"site{i:03d}": Identity.generate(f"site{i:03d}") for i in range(n)}
    members = Members.of({s: i.public_key for s, i in ids.items()})
    kw: dict[str, Any] = {"threshold": 2}
    if sparse:  # a sparse graph at 100 sites needs a weaker adversary than the defaults assume
        kw |= {"complete_graph_up_to": 50, "max_corrupt_fraction": 0.1, "max_dropout_fraction": 0.3}
        kw |= {"min_honest": 3, "security_bits": 40}
    return {s: (SecAggPolicy(members, **kw), i) for s, i in ids.items()}


def one(n: int, sparse: bool, dropout: float, length: int) -> dict[str, Any]:
    sites = federation(n, sparse)
    policy = next(iter(sites.values()))[0]
    degree = proposed_degree(policy, n) if sparse else n - 1
    rng = np.random.default_rng(n)
    inputs = {s: rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32) for s in sites}
    gone = set(sorted(sites)[: round(dropout * n)])
    t0 = time.perf_counter()
    total, state, stats = run_round(sites, inputs, degree=degree, drop={"masked": gone})
    wall = time.perf_counter() - t0
    expect = np.zeros(length, dtype=np.uint32)
    for s in state.survivors:
        expect += inputs[s]
    ads = {a.site: a for a in state.advertisements}
    per_step = {
        step: float(np.mean([v[step] for v in stats.site_seconds.values() if step in v])) for step in STEPS
    }
    return {
        "sites": n,
        "graph": "sparse" if sparse else "complete",
        "degree": degree,
        "share_threshold": ads["site099" if n == 100 else "site009"].share_threshold,
        "quorum": ads["site099" if n == 100 else "site009"].quorum,
        "dropout": dropout,
        "survivors": len(state.survivors),
        "params": length,
        "client_s": per_step,
        "client_total_s": sum(per_step.values()),
        "server_s": stats.server_seconds,
        "sent_bytes": float(np.mean(list(stats.sent.values()))),
        "received_bytes": float(np.mean(list(stats.received.values()))),
        "wall_s": wall,
        "correct": bool(np.array_equal(total, expect)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k parameters instead of 1M")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    length = 10_000 if args.quick else 1_000_000
    configs = [(10, False), (100, False), (100, True)]
    rows = [one(n, sparse, d, length) for n, sparse in configs for d in (0.0, 0.3)]
    load = os.getloadavg()
    report = {"definitions": DEFINITIONS, "machine": machine(load_average=load), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    head = f"{'sites':>5} {'graph':>8} {'k':>3} {'t':>3} {'drop':>4} " + " ".join(f"{s:>9}" for s in STEPS)
    print(head + f" {'client':>7} {'server':>7} {'sent MB':>8} {'recv MB':>8} ok")
    for r in rows:
        steps = " ".join(f"{r['client_s'][s]:9.3f}" for s in STEPS)
        print(
            f"{r['sites']:5d} {r['graph']:>8} {r['degree']:3d} {r['share_threshold']:3d} {r['dropout']:4.0%} "
            f"{steps} {r['client_total_s']:7.2f} {r['server_s']:7.2f} {r['sent_bytes'] / 1e6:8.2f} "
            f"{r['received_bytes'] / 1e6:8.2f} {r['correct']}"
        )
    print(f"load average during the run: {load}; wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
