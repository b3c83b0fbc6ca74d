"""HE round time over plaintext round time at 1M parameters with 10 sites, through Flower.

Workload: a copy of examples/finance with 10 banks (same generator, n_banks=10, each bank training
on its own rows), the `default` job (FedAvg of local Adam steps, batch 128) with the MLP widened to
15-1024-960-1 (1,001,345 parameters), run with the job's own 200 local steps per round and again
with 50: HE adds a roughly fixed cost per round (encrypt, check and sum, decrypt ~1M values), so the
ratio depends on how much a site trains per round, and both figures are reported. The plaintext
side is that job; the HE side is the same job with `[privacy.he] enabled = true`. Both run in
Flower's simulation engine, one CPU per site, in pairs (plaintext then HE, then HE then plaintext,
...). Round r of an HE run is paired with round r of the plaintext run of the same pair; round 1
(Ray workers start, the initial model) is not timed. Writes benchmarks/results/he_round.json: per
local-step count the median, min and max of the paired ratios (the top-level keys are the job's own
200 steps), and a breakdown of the HE round (site encryption, coordinator check and sum, from
metrics.json; each part timed alone).

    python benchmarks/he_round.py [--quick] [--rounds 6] [--repeats 2] [--local-steps 200,50]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FINANCE = REPO / "examples" / "finance"
N_BANKS = 10
MODEL_HIDDEN = "[1024, 960]"  # 15-1024-960-1: 1,001,345 parameters
JOB_LOCAL_STEPS = int(tomllib.loads((FINANCE / "jobs" / "default.toml").read_text())["train"]["local_steps"])


def _make_app(root: Path) -> Path:
    app = root / "finance10"
    shutil.copytree(FINANCE, app, ignore=shutil.ignore_patterns("data", "__pycache__", "german"))
    spec = importlib.util.spec_from_file_location("finance_prepare", app / "prepare.py")
    assert spec is not None and spec.loader is not None
    prep = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = prep
    spec.loader.exec_module(prep)
    gen = dataclasses.replace(prep.CONFIG.generator, n_banks=N_BANKS)
    prep.write_banks(app / "data", dataclasses.replace(prep.CONFIG, generator=gen))
    template = (app / "sites" / "bank_0.toml").read_text()
    for b in range(N_BANKS):
        text = template.replace('name = "bank_0"', f'name = "bank_{b}"')
        text = text.replace("bank_0.csv", f"bank_{b}.csv")
        (app / "sites" / f"bank_{b}.toml").write_text(text)
    pyproject = (app / "pyproject.toml").read_text()
    sites = ",".join(f"sites/bank_{b}.toml" for b in range(N_BANKS))
    lines = [f'sites = "{sites}"' if ln.startswith("sites =") else ln for ln in pyproject.splitlines()]
    text = "\n".join(ln for ln in lines if not ln.startswith("prepare ="))
    (app / "pyproject.toml").write_text(text + "\n")
    return app


def _run(app: Path, out: Path, *, he: bool, rounds: int, local_steps: int) -> list[dict[str, Any]]:
    from fedcore.harness.runner import run_app

    sets = [f"job.min_sites={N_BANKS}", f"model.hidden={MODEL_HIDDEN}", f"train.local_steps={local_steps}"]
    sets += ["privacy.he.enabled=true"] if he else []
    run_app(app, job="default", out_dir=out, rounds=rounds, sets=sets, baselines=False)
    rounds_: list[dict[str, Any]] = json.loads((out / "metrics.json").read_text())["rounds"]
    return rounds_


def _breakdown(he_rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the timed HE rounds of what metrics.json records about HE work."""

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    enc = [statistics.mean(m["he_encrypt_seconds"] for m in r["train"].values()) for r in he_rounds]
    return {
        "site_encrypt_seconds": med(enc),
        "coordinator_check_seconds": med([r["aggregate"]["he_check_seconds"] for r in he_rounds]),
        "coordinator_sum_seconds": med([r["aggregate"]["he_sum_seconds"] for r in he_rounds]),
        "sum_bytes": med([r["aggregate"]["he_sum_bytes"] for r in he_rounds]),
        "upload_bytes_per_site": med(
            [statistics.mean(m["ciphertext_bytes"] for m in r["train"].values()) for r in he_rounds]
        ),
        "sent_bytes_per_site_per_round": med([statistics.mean(r["sent_bytes"].values()) for r in he_rounds]),
    }


def _decrypt_seconds(sum_file: Path, secret_file: Path) -> float:
    """One site's parse + decrypt + divide of a real round's sum (compute only, in this process)."""
    from fedcore.he import EncryptedUpdate, decrypt_mean
    from fedcore.he.keys import load_secret_context

    data, ctx = sum_file.read_bytes(), load_secret_context(secret_file)
    t0 = time.perf_counter()
    decrypt_mean(ctx, EncryptedUpdate.from_bytes(data))
    return time.perf_counter() - t0


def _old_encrypt(sec: Any, delta: tuple[np.ndarray, ...]) -> list[bytes]:
    """The encryption before this round of work: ``ts.bfv_vector`` (list -> numpy -> PlainTensor)."""
    import tenseal as ts

    flat = np.concatenate([d.ravel() for d in delta])
    ints = np.rint(flat * 2.0**sec.params.frac_bits).astype(np.int64)
    n = sec.params.slots_per_ciphertext
    return [
        bytes(ts.bfv_vector(sec.tenseal, ints[i : i + n].tolist()).serialize())
        for i in range(0, ints.size, n)
    ]


def _context_trip(delta: tuple[np.ndarray, ...]) -> Any:
    """What a site's Context cost per message while it held the float64 model (``he-global``):
    built as an ArrayRecord, pickled to the ClientApp's worker and back (once each way)."""
    import pickle

    from flwr.app import ArrayRecord, Context, RecordDict

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    ctx.state["he-global"] = ArrayRecord([np.asarray(d) for d in delta])
    back = pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(ctx))))
    return [a.numpy() for a in back.state.array_records["he-global"].values()]


def _parts(secret_file: Path, repeats: int = 3) -> dict[str, float]:
    """Each part of an HE round at this model's size, timed alone in this process (median of
    ``repeats``, CPU seconds of this process, one site or one reply): what a site and the coordinator
    compute, the copies and checksums, the sites' disk writes (CPU only: fsync waits are not counted),
    and protobuf packaging of the 14 MB record (a deployment's gRPC path; the simulation engine hands
    Message objects to Ray instead)."""
    from flwr.app import RecordDict
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    from fedcore.flower import replies as checks
    from fedcore.flower.serde import opaque_from_record, opaque_to_record
    from fedcore.he import EncryptedUpdate, RunningSum, decrypt_mean, encrypt_update
    from fedcore.he.ciphertext import _digest
    from fedcore.he.keys import load_secret_context
    from fedcore.he.site import sum_digest
    from fedcore.site.replies import ReplyStore, StoredReply, write_npz_atomic

    sec = load_secret_context(secret_file)
    pub = sec.public()
    shapes = [(15, 1024), (1024,), (1024, 960), (960,), (960, 1), (1,)]
    rng = np.random.default_rng(0)
    delta = tuple(rng.normal(0.0, 0.01, s) for s in shapes)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:  # CPU seconds: what a part takes from the shared cores
        t0 = time.process_time()
        out = fn()
        times.setdefault(name, []).append(time.process_time() - t0)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            update = timed("site_encrypt_tenseal", lambda: encrypt_update(sec, delta, weight=1.0))
            data = timed("site_to_bytes_with_checksums", update.to_bytes)
            timed("removed_site_encrypt_via_tenseal_python_wrapper", lambda: _old_encrypt(sec, delta))
            timed("removed_context_with_model_state_pickle_both_ways", lambda: _context_trip(delta))
            timed("checksums_blake2b_one_update", lambda u=update: [_digest(c) for c in u.ciphertexts])
            state = {f"g{i}": a for i, a in enumerate(delta)} | {f"o{i}": a for i, a in enumerate(delta)}
            timed("site_state_write_npz_fsync", lambda st=state: write_npz_atomic(Path(tmp) / "s.npz", st))
            reply = StoredReply((np.frombuffer(data, dtype=np.uint8),), {"m": 1.0})
            store = ReplyStore(Path(tmp) / "r")
            timed("site_reply_store_write_fsync", lambda r=reply, st=store: st.save("j", "d", "train", 1, r))
            record = timed("opaque_to_record", lambda d=data: opaque_to_record(d))
            proto = timed(
                "flower_record_to_proto_and_bytes",
                lambda r=record: recorddict_to_proto(RecordDict({"arrays": r})).SerializeToString(),
            )

            def parse(raw: bytes = proto) -> Any:
                msg = ProtoRecordDict()
                msg.ParseFromString(raw)
                return recorddict_from_proto(msg)

            record = timed("flower_record_from_bytes", parse).array_records["arrays"]
            total = RunningSum(pub)
            timed(
                "coordinator_check_and_add_one_reply",
                lambda r=record, t=total: checks.check_encrypted(r, pub, shapes, "s", into=t),
            )
            summed = timed("coordinator_sum_serialize", total.result)
            wire = timed("coordinator_sum_to_bytes_with_checksums", summed.to_bytes)
            timed("sum_digest_sha256", lambda w=wire: sum_digest(w))
            raw = timed("opaque_from_record", lambda r=record: opaque_from_record(r))
            del raw
            parsed = timed("site_sum_from_bytes_with_checksums", lambda w=wire: EncryptedUpdate.from_bytes(w))
            timed("site_decrypt_mean", lambda p=parsed: decrypt_mean(sec, p))
    return {k: statistics.median(v) for k, v in times.items()}


SITE_PARTS = (  # per site and round (a train after evaluate decrypts nothing: the sum is applied once)
    "site_encrypt_tenseal",
    "site_to_bytes_with_checksums",
    "site_reply_store_write_fsync",
    "site_state_write_npz_fsync",
    "opaque_from_record",
    "site_sum_from_bytes_with_checksums",
    "site_decrypt_mean",
    "sum_digest_sha256",
)
COORDINATOR_PARTS = (
    "coordinator_sum_serialize",
    "coordinator_sum_to_bytes_with_checksums",
    "sum_digest_sha256",
)


def _split(parts: dict[str, float], extra: float) -> dict[str, Any]:
    """Where the HE round's extra seconds go: the parts timed alone, scaled to one round (a site's
    parts x sites / CPUs, since the sites share the cores; the coordinator checks every reply), and
    the remainder: Flower moving the bytes (simulation engine, Ray) and the machine's contention."""
    if not parts:
        return {}
    cpus = os.cpu_count() or 1
    site = sum(parts[k] for k in SITE_PARTS)
    coord = sum(parts[k] for k in COORDINATOR_PARTS) + N_BANKS * parts["coordinator_check_and_add_one_reply"]
    sites_wall = site * N_BANKS / min(cpus, N_BANKS)
    return {
        "parts_seconds_one_site_or_reply": parts,
        "sites_seconds_per_round_wall_estimate": sites_wall,
        "coordinator_seconds_per_round": coord,
        "he_extra_seconds_per_round": extra,
        "remainder_seconds_per_round": extra - sites_wall - coord,
        "how": f"parts timed alone (CPU seconds) in the benchmark process at 1M parameters; sites' parts x "
        f"{N_BANKS} sites / {min(cpus, N_BANKS)} CPUs; coordinator: {N_BANKS} reply checks + the sum; "
        "remainder = HE round - plaintext round (medians) - those: the simulation engine moving 14 MB up "
        "and down per site (Ray pickling the Message, Flower's object ids), fsync waits, and the other "
        "processes on the shared machine (it can come out negative when they slow the plaintext side more)",
    }


def _paired(
    app: Path, tmp: Path, *, rounds: int, repeats: int, local_steps: int
) -> tuple[dict[str, Any], Path]:
    """``repeats`` pairs of runs (order alternating) at ``local_steps``: the paired round ratios,
    the HE breakdown from metrics.json, and the last HE run's out dir."""
    plain: list[float] = []
    enc: list[float] = []
    ratios: list[float] = []
    he_timed: list[dict[str, Any]] = []
    he_out = tmp
    for i in range(repeats):
        runs: dict[bool, list[dict[str, Any]]] = {}
        for he in [False, True] if i % 2 == 0 else [True, False]:
            out = tmp / f"run-{local_steps}-{i}-{he}"
            runs[he] = _run(app, out, he=he, rounds=rounds, local_steps=local_steps)[1:]
            secs = [round(r["seconds"], 2) for r in runs[he]]
            print(f"{local_steps} steps, pair {i} {'HE' if he else 'plaintext'}: {secs} s", flush=True)
            he_out = out if he else he_out
        for p_round, h_round in zip(runs[False], runs[True], strict=True):
            plain.append(p_round["seconds"])
            enc.append(h_round["seconds"])
            ratios.append(h_round["seconds"] / p_round["seconds"])
        he_timed += runs[True]
    decrypt = _decrypt_seconds(he_out / "last_sum.he", he_out / "sites" / "bank_0" / "he_secret.ctx")
    result = {
        "local_steps": local_steps,
        "timed_rounds_per_side": len(ratios),
        "round_ratio": statistics.median(ratios),
        "round_ratio_min": min(ratios),
        "round_ratio_max": max(ratios),
        "plaintext_seconds_per_round": statistics.median(plain),
        "he_seconds_per_round": statistics.median(enc),
        "he_extra_seconds_per_round": statistics.median(enc) - statistics.median(plain),
        "he_breakdown": {**_breakdown(he_timed), "site_decrypt_seconds_compute_only": decrypt},
        "runs": {"plaintext": plain, "he": enc, "ratios": ratios},
    }
    return result, he_out


def main() -> None:
    from _machine import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one pair of 3-round runs, 20 local steps")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run (round 1 is not timed)")
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs, order alternating")
    ap.add_argument(
        "--local-steps",
        default=f"{JOB_LOCAL_STEPS},50",
        help="comma-separated local steps per round; the first gives the top-level keys",
    )
    args = ap.parse_args()
    rounds, repeats = (3, 1) if args.quick else (args.rounds, args.repeats)
    steps = [20] if args.quick else [int(x) for x in args.local_steps.split(",")]
    load_start = os.getloadavg()
    by_steps: dict[str, dict[str, Any]] = {}
    parts: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        app = _make_app(Path(tmp))
        for k in steps:
            by_steps[str(k)], he_out = _paired(app, Path(tmp), rounds=rounds, repeats=repeats, local_steps=k)
            if not parts:
                parts = _parts(he_out / "sites" / "bank_0" / "he_secret.ctx", 2 if args.quick else 3)
    main_ = by_steps[str(steps[0])]
    result = {
        "workload": "examples/finance with 10 banks (generator n_banks=10), job `default` (FedAvg of "
        "local Adam steps, batch 128), MLP 15-1024-960-1, at the local steps per round of each "
        f"`by_local_steps` entry (top-level keys: {steps[0]}; the job's own is {JOB_LOCAL_STEPS}); HE side: "
        "the same job with privacy.he.enabled=true (BFV default key set)",
        "num_params": 1_001_345,
        "sites": N_BANKS,
        "rounds_per_run": rounds,
        "pairs": repeats,
        "quick": args.quick,
        **{k: v for k, v in main_.items() if k != "runs"},
        "by_local_steps": by_steps,
        "breakdown": _split(parts, main_["he_extra_seconds_per_round"]),
        "definition": "round_ratio: median over paired rounds (round r of an HE run / round r of the "
        "plaintext run of the same pair, rounds 2..N, train + evaluate, Flower simulation, 1 CPU per site); "
        "he_breakdown: medians over the HE rounds of metrics.json's site encryption (mean over sites), the "
        "coordinator's reply check and sum, bytes; site_decrypt_seconds_compute_only: one site's parse + "
        "decrypt + divide of the last sum, timed in the benchmark process",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "machine": machine(),
    }
    out = REPO / "benchmarks" / "results" / "he_round.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| local steps | plaintext s/round | HE s/round | HE extra s | ratio (median, min-max) |")
    print("|---|---|---|---|---|")
    for k, r in by_steps.items():
        print(
            f"| {k} | {r['plaintext_seconds_per_round']:.3f} | {r['he_seconds_per_round']:.3f} | "
            f"{r['he_extra_seconds_per_round']:.3f} | {r['round_ratio']:.3f} "
            f"({r['round_ratio_min']:.3f}-{r['round_ratio_max']:.3f}, {r['timed_rounds_per_side']} pairs) |"
        )
    print(json.dumps(result["he_breakdown"], indent=2))
    print(json.dumps(result["breakdown"], indent=2))


if __name__ == "__main__":
    main()
