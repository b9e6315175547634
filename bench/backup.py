"""Backup engines side by side: ReClo, restic and borg on the same data, in one run.

    .venv/bin/python bench/backup.py --size-mb 1024 [--work DIR] [--out results.json] [--dataset DIR]
                                     [--plot docs/benchmarks/backup.png] [--s3] [--warm]

Needs `restic` and `borg` on the PATH (Debian: `apt-get install restic borgbackup`); the
plot needs matplotlib (`.venv/bin/pip install matplotlib`; without it the PNG is skipped).

Steps (issue 8's table; docs/BENCHMARKS.md has the results and how to read them):
1. generate the data set with ../shared/bench/make_dataset.py (`--dataset-tool`);
2. each engine: init (not measured), full backup, repository size; `--full-runs` rounds
   (3), each from a copy of the engine's state after init, the median time;
3. one simulated day of changes (`make_dataset.py --mutate 1`);
4. each engine: incremental backup, repository growth; `--incremental-runs` rounds (3),
   each from a copy of the engine's state after the full, the median time;
5. each engine: restore of its newest snapshot, byte-compared with the source;
   `--restore-runs` rounds (3), each in another engine order, and the median time
   (a single restore moves by ±10 % from run to run here, more than the engines differ).
Each measured step is a fresh child process: wall time and peak RSS (ru_maxrss from
wait4). By default the page cache is dropped before each step (root only), so data is
read from disk as in a nightly backup; `--warm` keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup_engines import ENGINES, ROOT, Engine  # noqa: E402
from measure import (  # noqa: E402
    MiB,
    CommandFailed,
    can_drop_page_cache,
    compare_trees,
    folder_size,
    machine,
    run_measured,
)

DEFAULT_DATASET_TOOL = ROOT.parent / "shared" / "bench" / "make_dataset.py"
# The machine is shared: wait for a quiet moment (1-minute load average below this, on
# the 2-core reference machine) rather than measure other people's test runs, but not forever.
DEFAULT_MAX_LOAD = 1.5
DEFAULT_WAIT_MINUTES = 20
DEFAULT_RESTORE_RUNS = 3
DEFAULT_INCREMENTAL_RUNS = 3
DEFAULT_FULL_RUNS = 3
LOAD_POLL_SECONDS = 30
MUTATION_SEED = 1  # "one day's changes" of issue 8

# Issue 8's targets, as the largest ReClo/restic ratio that meets each.
TARGETS = {
    "full_seconds": 0.5,
    "incremental_seconds": 0.5,
    "growth_mib": 0.25,
    "size_after_full_mib": 1.0,
    "restore_seconds": 1.0,
    "backup_rss_mib": 1.0,
    "restore_rss_mib": 1.0,
}
ROWS = [  # key, label, unit
    ("full_seconds", "full backup wall time", "s"),
    ("full_mib_s", "full backup throughput", "MiB/s"),
    ("incremental_seconds", "day-incremental wall time", "s"),
    ("growth_mib", "repository growth for the day", "MiB"),
    ("size_after_full_mib", "repository size after the full", "MiB"),
    ("restore_seconds", "restore wall time", "s"),
    ("restore_mib_s", "restore throughput", "MiB/s"),
    ("backup_rss_mib", "peak RSS, backup (max of full and incremental)", "MiB"),
    ("restore_rss_mib", "peak RSS, restore", "MiB"),
]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    missing = [tool for tool in ("restic", "borg") if tool in args.engines and shutil.which(tool) is None]
    if missing:
        sys.exit(f"not on the PATH: {', '.join(missing)} (Debian: apt-get install restic borgbackup)")
    if not args.dataset_tool.is_file():
        sys.exit(f"no data set tool at {args.dataset_tool} (give --dataset-tool PATH)")
    own_work = args.work is None
    work = Path(tempfile.mkdtemp(prefix="reclo-bench-")) if own_work else args.work.resolve()
    try:
        results = run(args, work)
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or Path("backup-results.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults: {out}")
    if args.plot:
        try:
            from plot import plot
        except ImportError as e:
            print(f"no plot ({e}): .venv/bin/pip install matplotlib, then "
                  f".venv/bin/python bench/plot.py {out} {args.plot}")
        else:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
    return 0 if all(e["restore_check"]["identical"] for e in results["engines"].values()) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="size of the data set (1024)")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed afterwards); "
                                             "its data, repositories and restores are replaced")
    p.add_argument("--dataset-tool", type=Path, default=DEFAULT_DATASET_TOOL, help="make_dataset.py")
    p.add_argument("--dataset", type=Path,
                   help="a pristine generated data set to copy instead of generating one (generated there "
                        "first if missing; never mutated, so it can serve many runs; --size-mb must match)")
    p.add_argument("--engines", type=lambda s: s.split(","), default=list(ENGINES),
                   help=f"comma-separated subset of {','.join(ENGINES)}")
    p.add_argument("--s3", action="store_true",
                   help="also ReClo through its services to S3 (moto_server and `reclo up`, started here)")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before each step")
    p.add_argument("--out", type=Path, help="JSON results (default: backup-results.json)")
    p.add_argument("--plot", type=Path, help="PNG of throughput and repository size (needs matplotlib)")
    p.add_argument("--max-load", type=float, default=DEFAULT_MAX_LOAD,
                   help="wait until the 1-minute load average is below this (1.5)")
    p.add_argument("--wait-minutes", type=float, default=DEFAULT_WAIT_MINUTES,
                   help="...but no longer than this, then run anyway (20)")
    p.add_argument("--keep", action="store_true", help="keep the data, repositories and restores")
    p.add_argument("--full-runs", type=_positive, default=DEFAULT_FULL_RUNS,
                   help="full backups of each engine, each from a copy of its state after init (an empty "
                        "repository), in rounds of rotated order; the table gives the median time (not "
                        f"ReClo-S3) ({DEFAULT_FULL_RUNS})")
    p.add_argument("--incremental-runs", type=_positive, default=DEFAULT_INCREMENTAL_RUNS,
                   help="day incrementals of each engine, each from a copy of its state after the full, in "
                        "rounds of rotated order; the table gives the median time and the highest peak (not "
                        f"ReClo-S3, whose repository lives in the services) ({DEFAULT_INCREMENTAL_RUNS})")
    p.add_argument("--restore-runs", type=_positive, default=DEFAULT_RESTORE_RUNS,
                   help="restores of each engine, in rounds of rotated order; the table gives the median "
                        f"time and the highest peak ({DEFAULT_RESTORE_RUNS})")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args, work: Path) -> dict:
    cold = not args.warm and can_drop_page_cache()
    if not args.warm and not cold:
        print("cannot drop the page cache (not root?): measuring with a warm cache")
    data = work / "data"
    saved = work / "saved-states"  # each engine's state to run a step again from
    for old in [data, *(work / name for name in ENGINES), work / "ReClo-S3", work / "restore", saved,
                work / "after-the-full"]:
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    engines: list[Engine] = [ENGINES[name](work) for name in args.engines]
    if args.s3:
        from reclo_s3 import ReCloS3

        engines.insert(1, ReCloS3(work))
    results: dict = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size_mb": args.size_mb,
        "cache": "cold" if cold else "warm",
        "machine": machine(work),
        "versions": {},
        "engines": {e.name: {} for e in engines},
    }
    try:
        for e in engines:
            results["versions"][e.name] = e.version()
            e.prepare()
        print("\n".join(f"{k}: {v}" for k, v in results["versions"].items()))

        started = time.perf_counter()
        if args.dataset is not None:
            # Generating takes minutes of CPU; a kept pristine copy gives the same bytes.
            if not args.dataset.is_dir():
                step(f"generating {args.size_mb} MiB into {args.dataset} (kept for later runs)")
                subprocess.run([sys.executable, str(args.dataset_tool), str(args.dataset), "--size-mb",
                                str(args.size_mb)], check=True)
            step(f"copying the pristine data set {args.dataset}")
            subprocess.run(["cp", "-a", str(args.dataset), str(data)], check=True)
        else:
            step(f"generating {args.size_mb} MiB with {args.dataset_tool}")
            subprocess.run([sys.executable, str(args.dataset_tool), str(data), "--size-mb", str(args.size_mb)],
                           check=True)
        size = folder_size(data)
        results["dataset"] = {"bytes": size.bytes, "files": size.files,
                              "generate_seconds": round(time.perf_counter() - started, 1)}
        results["load"] = wait_for_quiet(args.max_load, args.wait_minutes)

        measure_rounds(engines, "full", args.full_runs, data, saved, results, cold)
        step(f"one day of changes (--mutate {MUTATION_SEED})")
        mutation = subprocess.run([sys.executable, str(args.dataset_tool), str(data), "--mutate", str(MUTATION_SEED)],
                                  check=True, capture_output=True, text=True).stdout.strip()
        results["dataset"]["mutation"] = mutation
        results["dataset"]["bytes_after_mutation"] = folder_size(data).bytes
        print(mutation)
        measure_rounds(engines, "incremental", args.incremental_runs, data, saved, results, cold)
        for round_ in range(args.restore_runs):
            # Each round in another order: no engine is always the one after a deletion.
            first = round_ % len(engines)
            for e in engines[first:] + engines[:first]:
                measure_restore(e, data, work / "restore" / e.name, results["engines"][e.name], cold,
                                args.keep and round_ == args.restore_runs - 1)
    finally:
        for e in engines:
            e.close()
    results["load"]["at_end"] = os.getloadavg()
    # In a shared working tree the code can change while the script waits for a quiet machine.
    changed = {e.name: v for e in engines if (v := e.version()) != results["versions"][e.name]}
    if changed:
        results["versions_at_end"] = changed
        print(f"versions changed during the run: {changed}")
    results["figures"] = {e.name: figures(results["engines"][e.name], results["dataset"]) for e in engines}
    results["table"] = table(results["figures"], [e.name for e in engines])
    print()
    print(describe(results))
    print()
    print(results["table"])
    return results


def step(text: str) -> None:
    print(f"--- {text}", flush=True)


def wait_for_quiet(max_load: float, minutes: float) -> dict:
    started = time.monotonic()
    first = os.getloadavg()
    while os.getloadavg()[0] > max_load and time.monotonic() - started < minutes * 60:
        print(f"load average {os.getloadavg()[0]:.2f} > {max_load}: waiting (at most {minutes:g} min)", flush=True)
        time.sleep(LOAD_POLL_SECONDS)
    return {"before_waiting": first, "waited_seconds": round(time.monotonic() - started),
            "at_start": os.getloadavg()}


def measure_rounds(engines: list[Engine], kind: str, runs: int, data: Path, saved: Path, results: dict,
                   cold: bool) -> None:
    """`runs` backups of each engine, in rounds of rotated order (no engine always first
    after the cache is dropped); each repeatable engine's from a copy of its state before
    the first, its logs apart (ReClo-S3 once: its repository lives in the services)."""
    try:
        for e in engines:
            if e.repeatable and runs > 1:
                shutil.copytree(e.work, saved / e.name, symlinks=True,
                                ignore=lambda folder, names, e=e: ["logs"] if Path(folder) == e.work else [])
        for round_ in range(runs):
            first = round_ % len(engines)
            for e in engines[first:] + engines[:first]:
                if round_ and not e.repeatable:
                    continue
                if round_:
                    for child in e.work.iterdir():
                        if child != e.logs:
                            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                    shutil.copytree(saved / e.name, e.work, symlinks=True, dirs_exist_ok=True)
                measure_backup(e, data, kind, results["engines"][e.name], cold)
    finally:
        shutil.rmtree(saved, ignore_errors=True)


def measure_backup(e: Engine, data: Path, kind: str, into: dict, cold: bool) -> None:
    step(f"{e.name}: {kind} backup")
    before = e.repository_size()
    argv, cwd = e.backup(data, kind)
    runs = into.setdefault(f"{kind}s", [])
    run = run_measured(argv, env=e.env, cwd=cwd, logs=e.logs, name=f"backup-{kind}-{len(runs) + 1}", cold=cold)
    after = e.repository_size()
    into[kind] = {**run.as_dict(), "repository_before": vars(before), "repository_after": vars(after),
                  "reported": e.report(run)}
    runs.append(into[kind])
    print(f"{run.seconds:.1f} s, peak RSS {run.peak_rss_bytes / MiB:.0f} MiB, repository "
          f"{before.bytes / MiB:.1f} -> {after.bytes / MiB:.1f} MiB", flush=True)


def measure_restore(e: Engine, data: Path, target: Path, into: dict, cold: bool, keep: bool) -> None:
    """One more restore of e's newest snapshot (its logs numbered), compared with data."""
    step(f"{e.name}: restore")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    argv, cwd = e.restore(target)
    try:
        name = f"restore-{len(into.get('restores', [])) + 1}"
        run = run_measured(argv, env=e.env, cwd=cwd, logs=e.logs, name=name, cold=cold)
    except CommandFailed as failure:
        into["restore_error"] = str(failure)
        raise
    comparison = compare_trees(data, e.restored_root(target, data))
    into.setdefault("restores", []).append({**run.as_dict(), "reported": e.report(run)})
    into.setdefault("restore_checks", []).append(comparison.as_dict())
    # Every restore must give back the source, not only the one the table's time is from.
    into["restore_check"] = comparison.as_dict() if not comparison.identical else into.get(
        "restore_check", comparison.as_dict())
    verdict = "identical" if comparison.identical else f"{comparison.differences} DIFFERENCES: {comparison.listed}"
    print(f"{run.seconds:.1f} s, peak RSS {run.peak_rss_bytes / MiB:.0f} MiB; {comparison.files} files, "
          f"{verdict}; {comparison.mtime_differences} mtime differences", flush=True)
    if not keep:
        shutil.rmtree(target, ignore_errors=True)


def figures(r: dict, dataset: dict) -> dict:
    full, incremental, restores = r["full"], r["incremental"], r["restores"]
    restore_seconds = statistics.median(run["seconds"] for run in restores)
    incremental_seconds = statistics.median(run["seconds"] for run in r["incrementals"])
    full_seconds = statistics.median(run["seconds"] for run in r["fulls"])
    return {
        "full_seconds": full_seconds,
        "full_runs": [run["seconds"] for run in r["fulls"]],
        "full_mib_s": dataset["bytes"] / MiB / full_seconds,
        "incremental_seconds": incremental_seconds,
        "incremental_runs": [run["seconds"] for run in r["incrementals"]],
        "growth_mib": (incremental["repository_after"]["bytes"] - incremental["repository_before"]["bytes"]) / MiB,
        "size_after_full_mib": full["repository_after"]["bytes"] / MiB,
        "restore_seconds": restore_seconds,
        "restore_runs": [run["seconds"] for run in restores],
        "restore_mib_s": dataset["bytes_after_mutation"] / MiB / restore_seconds,
        "backup_rss_mib": max(run["peak_rss_bytes"] for run in [*r["fulls"], *r["incrementals"]]) / MiB,
        "restore_rss_mib": max(run["peak_rss_bytes"] for run in restores) / MiB,
        "restore_identical": r["restore_check"]["identical"],
    }


def table(figs: dict, names: list[str]) -> str:
    """Issue 8's table in Markdown: each engine, then each ReClo variant / restic."""
    ours = [n for n in names if n.startswith("ReClo")]
    ratios = [n for n in ours if "restic" in figs]
    head = ["measure", *names, *(f"{n} / restic" for n in ratios), "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit in ROWS:
        cells = [f"{label} ({unit})", *(_fmt(figs[n][key]) for n in names)]
        for n in ratios:
            ratio = figs[n][key] / figs["restic"][key] if figs["restic"][key] else float("nan")
            met = "" if key not in TARGETS else (" ✓" if ratio <= TARGETS[key] else " ✗")
            cells.append(f"{ratio:.2f}×{met}")
        cells.append(f"≤ {TARGETS[key]:g}×" if key in TARGETS else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| restored tree equals the source | " + " | ".join(
        "yes" if figs[n]["restore_identical"] else "**NO**" for n in names) + " |" + " |" * (len(ratios) + 1))
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def describe(results: dict) -> str:
    m, d, load = results["machine"], results["dataset"], results["load"]
    return (f"{m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB RAM, {m['filesystem'].get('type')} on "
            f"{m['filesystem'].get('device')}, {m['os']}, Python {m['python']}; page cache {results['cache']}; "
            f"data set {d['bytes'] / MiB:.0f} MiB in {d['files']} files; load average at start "
            f"{load['at_start'][0]:.2f} (waited {load['waited_seconds']} s), at end {load['at_end'][0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
