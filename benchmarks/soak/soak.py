"""Soak (issue 21): random faults of every kind, counting blocks lost or wrong and hangs.

Fault kinds (each in its module, each step bounded in time, every block checked against a
reference matrix afterwards):

- ``damage`` (:mod:`kind_damage`): one chunk or metadata object of any stored array truncated,
  bit-flipped or deleted, or a claim garbled, on a function store and a model store;
- ``filler kill`` and ``worker kill`` (:mod:`kind_kill`): fillers SIGKILLed at random moments
  (some inside a block write), and workers of ``fill(workers=2)``;
- ``concurrent kill`` (:mod:`kind_concurrent`): three fillers and a reader on one store, all
  fillers SIGKILLed at once while the reader checks every read;
- ``full disk`` (:mod:`kind_disk`): ``ENOSPC`` on a small tmpfs;
- ``S3 error`` (:mod:`kind_s3`): 500, 503 and timeouts from a local moto S3 server.

The record goes to ``benchmarks/results/soak.json`` and the section "Soak: kill and
concurrency" of RESULTS.md is rendered from it (:func:`render`).

    python benchmarks/soak/soak.py --damage 300 --filler-kills 100 --worker-kills 3 \
        --concurrent 3 --disk 60 --budget-min 27

The S3 trials run last and carry most of the count: they stop when the faults of every kind
reach 10,000 (or ``--s3`` S3 faults, if given), or when ``--budget-min`` minutes are spent.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
import results_md
from harness import Timer, machine_info, scratch_dir
from soak_common import STEP_S, Tally

SECTION = "## Soak: kill and concurrency"
KINDS = ("damage", "filler kill", "worker kill", "concurrent kill", "full disk", "S3 error")
TARGET_FAULTS = 10_000
FAILURES = ("blocks_lost", "blocks_wrong", "hangs", "unclear_errors", "checks_failed")


def _concurrent(n: int, work: Path, rng: random.Random, tally: Tally) -> None:
    import kind_concurrent

    args = argparse.Namespace(fillers=3, delay=0.005)
    t = Timer()
    for number in range(n):
        r = kind_concurrent.run_trial(number, rng, work, args)
        tally.faults += r["killed"] + r["self_killed"]
        tally.blocks_checked += r["blocks_checked"]
        tally.blocks_lost += r["lost"]
        tally.blocks_wrong += r["wrong"] + r["reader_wrong"] + (not r["final_ok"])
        tally.blocks_wrong += not r["refill_exact"]
        tally.unclear_errors += len(r["reader_errors"]) + len(r["filler_failures"])
        for k, v in r["reader"].items():
            tally.outcomes[f"reader {k}"] += v
        if not kind_concurrent.is_ok(r):
            tally.fail(f"concurrent trial {number}: {r}"[:300])
    tally.seconds += t.lap()


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    import kind_damage
    import kind_disk
    import kind_kill
    import kind_s3

    rng = random.Random(args.seed)
    t0 = time.monotonic()
    disk = Path(tempfile.mkdtemp())

    def s3_s() -> float:  # S3 trials run last, in what is left of the time budget
        return max(60.0, args.budget_min * 60 - (time.monotonic() - t0))

    def s3_faults() -> int:  # what is left of the target, unless --s3 says
        so_far = sum(t.faults for k, t in tallies.items() if k != "S3 error")
        return args.s3 if args.s3 is not None else max(0, TARGET_FAULTS - so_far)

    tallies = {k: Tally() for k in KINDS}
    notes: dict[str, Any] = {}
    with scratch_dir("soak") as work:
        steps = [
            ("full disk", lambda t: notes.update(disk=kind_disk.run(args.disk, disk, rng, t))),
            ("filler kill", lambda t: kind_kill.run_fillers(args.filler_kills, work, rng, t)),
            ("worker kill", lambda t: kind_kill.run_workers(args.worker_kills, work, rng, t)),
            ("concurrent kill", lambda t: _concurrent(args.concurrent, work, rng, t)),
            ("damage", lambda t: kind_damage.run(args.damage, work, rng, t)),
            (
                "S3 error",
                lambda t: notes.update(s3_answers=kind_s3.run(s3_faults(), rng, t, s3_s())),
            ),
        ]
        for kind, step in steps:
            print(f"{kind} ...", flush=True)
            step(tallies[kind])
            print(f"{kind}: {tallies[kind].as_json()}", flush=True)
    notes["budget_min"] = args.budget_min
    notes["step_bound_s"] = STEP_S
    notes["s3_request_worst_s"] = round(kind_s3.request_worst_s(), 2)
    notes["s3_trial"] = {"reads": kind_s3.READS, "share_failed": list(kind_s3.RATES)}
    notes["s3_fault_cost_s"] = round(kind_s3.fault_cost_s(), 2)
    notes["s3_max_extra_s"] = kind_s3.MAX_EXTRA_S
    return {"kinds": {k: t.as_json() for k, t in tallies.items()}, **notes}


def totals(data: dict[str, Any]) -> dict[str, int]:
    keys = ("faults", "blocks_checked", *FAILURES)  # records before checks_failed have none
    return {k: sum(int(t.get(k, 0)) for t in data["kinds"].values()) for k in keys}


# ---------------------------------------------------------------------- the section
DESCRIPTION = {
    "damage": "one chunk or metadata object of any array (matrix, self-influence, factors of "
    "each side, top-k values and indices, notes, group and array metadata) truncated, flipped "
    "or deleted, or a claim garbled, on a function store and a `ProjectedInfluence` store; then "
    "a random read, fill, `top_k`, `top_k_array`, `self_influence`, `verify`, `store_report` or "
    "`repair`; then `repair()` and `fill()`",
    "filler kill": "one or two forked filler processes (fill, or a top-k array's fill) "
    "SIGKILLed at a random moment, 1-4 rounds per store (30% armed to kill themselves inside "
    "a block write: the outcomes say how many did before the SIGKILL)",
    "worker kill": "a worker of `fill(workers=2)`, or its filler, SIGKILLed mid-fill",
    "concurrent kill": "three fillers and a checking reader on one store; all fillers "
    "SIGKILLed at once",
    "full disk": "`ENOSPC` on a 20 MiB tmpfs filled to a random free space",
    "S3 error": "500, 503 or a timeout answered by a local moto S3 server to a random share "
    "of the requests of a trial's reads and fill",
}


def render(record: dict[str, Any]) -> str:
    """The section, from the record alone."""
    data = record["data"]
    kinds = {k: data["kinds"][k] for k in KINDS if k in data["kinds"]}  # the file sorts keys
    tot = totals(data)
    lines = results_md.record_head(record)
    lines += [
        "",
        "Every fault is followed by checks of every block against a reference matrix (exact "
        "for function stores, 1e-5 of the largest value for the model store): a stored block "
        "must decode and be right, no block stored before a fault may be missing after it "
        "(lost), a refill must compute exactly the missing blocks, and every step has a time "
        "bound (a step past it is a hang). An operation on a damaged store must give the "
        "right values or raise a clear error (infl_array's own, or an `OSError` naming the "
        "block and the fix; under S3 faults, one naming the store's or the object's URL, "
        "saying that the request failed, not the data, and how to retry); anything else "
        "counts as unclear. A check that itself raises (the blocks then go unverified) "
        "counts as a failed check, whatever its message.",
        "",
        *results_md.table(
            [
                "fault kind",
                "what",
                "faults",
                "blocks checked",
                "lost",
                "wrong",
                "hangs",
                "unclear errors",
                "checks failed",
                "seconds",
            ],
            [
                (
                    k,
                    DESCRIPTION[k],
                    t["faults"],
                    t["blocks_checked"],
                    t["blocks_lost"],
                    t["blocks_wrong"],
                    t["hangs"],
                    t["unclear_errors"],
                    t.get("checks_failed", 0),
                    f"{t['seconds']:.0f}",
                )
                for k, t in kinds.items()
            ],
            align="llrrrrrrrr",
        ),
        "",
        "How the faults ended:",
        "",
    ]
    for k, t in kinds.items():
        shown = ", ".join(f"{n} {v}" for n, v in t["outcomes"].items())
        lines.append(f"- {k}: {shown or 'none'}")
    if data.get("s3_answers"):
        lines.append(f"- S3 answers injected: {data['s3_answers']}")
    if data.get("s3_trial"):
        share = data["s3_trial"]["share_failed"]
        lines.append(
            f"- S3 trials: {data['s3_trial']['reads']} reads and a fill each, a share of their "
            f"requests drawn from {share[0]:.0%}-{share[1]:.0%} failed"
        )
    if "s3_request_worst_s" in data:
        s3 = data["kinds"]["S3 error"]
        lines += [
            "",
            f"Time bounds: every step has {data['step_bound_s']:g} s (a step past its bound is "
            "a hang, and its stack is kept in the failure). Under S3 faults the client is "
            "impatient (0.5 s connect and read timeouts, one botocore attempt per try of "
            "s3fs's own 5), so one request raises "
            f"within {data['s3_request_worst_s']:g} s at most, and each injected fault adds at "
            f"most {data['s3_fault_cost_s']:g} s to its step (a held request's timeouts plus "
            "s3fs's longest backoff): a step under faults is bounded by "
            f"{data['step_bound_s']:g} s plus that for each fault injected into its store while "
            f"it runs (at most {data['s3_max_extra_s']:g} s more: the package's longest wait, on "
            "a claim a live owner holds, ends by then). The slowest step under S3 faults took "
            f"{s3['slowest_step_s']:g} s. Creating the stores and the checks after the faults "
            "use a patient client (10 s timeouts, 5 attempts): they verify the stored data, "
            "not the transport.",
        ]
    if data.get("disk"):
        lines.append(f"- full disk: {data['disk']}")
    failures = [f for t in kinds.values() for f in t["failures"]]
    bad = sum(tot[k] for k in FAILURES)
    short = ""
    if tot["faults"] < TARGET_FAULTS:
        short = (
            f" (target {TARGET_FAULTS:,}: not reached; the S3 trials, run last, stop when the "
            f"{data['budget_min']:g} min budget is spent; the seconds column says where it went)"
        )
    lines += [
        "",
        f"Faults: **{tot['faults']}**{short}. Blocks lost or wrong: "
        f"**{tot['blocks_lost'] + tot['blocks_wrong']}** (target 0); hangs: **{tot['hangs']}** "
        f"(target 0); unclear errors: **{tot['unclear_errors']}**; failed checks: "
        f"**{tot['checks_failed']}**; all checks "
        f"{'passed' if bad == 0 else 'FAILED'}.",
    ]
    if failures:
        lines += ["", "First failures:", "", *(f"- `{f}`" for f in failures[:10])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--damage", type=int, default=300, help="damaged-chunk faults")
    parser.add_argument("--filler-kills", type=int, default=100, help="filler kill trials")
    parser.add_argument("--worker-kills", type=int, default=3, help="worker kill trials")
    parser.add_argument("--concurrent", type=int, default=3, help="concurrent kill trials")
    parser.add_argument("--disk", type=int, default=60, help="full-disk trials")
    parser.add_argument(
        "--s3", type=int, default=None,
        help="S3 faults to inject at most (default: what the other kinds leave of 10,000)",
    )  # fmt: skip
    parser.add_argument(
        "--budget-min", type=float, default=27.0, help="minutes; S3 trials stop when it is spent"
    )
    parser.add_argument("--seed", type=int, default=0)
    results_md.add_output_args(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    load = results_md.load_now()
    t = Timer()
    data = run_all(args)
    info = machine_info(("numpy", "zarr", "s3fs", "moto", "infl_array"))
    results_md.save_result(
        "soak", SECTION, "soak/soak.py:render", data, args,
        script="soak/soak.py", argv=argv, wall_s=t.lap(), machine=info, load_start=load,
    )  # fmt: skip
    return 0 if sum(totals(data)[k] for k in FAILURES) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
