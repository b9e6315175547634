"""Restore through the server from S3 (moto), one version of the agent against another.

    flock /tmp/reclo-bench.lock .venv/bin/python bench/restore_s3.py --dataset /var/tmp/ds/base \\
        [--baseline b62f7e1] [--candidate HEAD] [--runs 1] [--work DIR] [--out restore-s3.json]

Each version is exported with `git archive` (shared/, clients/, services/) into the work
folder and run with PYTHONPATH pointing at it, so colleagues' uncommitted edits in the
shared tree never leak into a figure. One server (`reclo up` with moto, as
bench/reclo_s3.py starts it) and one full backup of the data set (by the candidate), then
each run restores `latest` with the baseline, then the candidate, into an empty folder:
a fresh `reclo-agent restore` process, page cache dropped first, wall time and peak RSS
from wait4, the GETs moto logged and the CPU seconds it and the server spent meanwhile,
the load average before and after it, and a byte comparison with the data set. Prints a table; `--out` keeps the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup_engines import ROOT  # noqa: E402
from measure import MiB, compare_trees, folder_size, machine, run_measured  # noqa: E402
from backup_engines import ReClo  # noqa: E402
from reclo_s3 import ReCloS3  # noqa: E402

EXPORTED = ("shared", "clients", "services")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def export(commit: str, where: Path) -> str:
    """The version's code in `where`; returns its short commit id."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit], check=True,
                           capture_output=True, text=True).stdout.strip()
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", short, *EXPORTED], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(where)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {short} failed")
    return short


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def s3_gets(log: Path, start: int) -> tuple[int, int]:
    """Presigned GETs (the agent's reads) moto logged after byte `start` of its log, and
    the log's new size."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read()
    return sum(1 for line in text.splitlines() if b"GET /" in line and b"X-Amz-Signature=" in line), start + len(text)


def measure_engine(engine: ReClo, dataset: Path, work: Path, versions: dict[str, str], labels: list[str],
                   runs: int, results: dict) -> None:
    engine.prepare()
    s3 = isinstance(engine, ReCloS3)
    moto, server = engine.processes if s3 else (None, None)
    argv_backup, cwd = engine.backup(dataset, "full")
    backup = run_measured(argv_backup, env=engine.env, cwd=cwd, logs=work / "logs", name=f"backup-{engine.name}",
                          cold=True)
    print(f"{engine.name}: full backup {backup.seconds:.1f} s (load {backup.load_before[0]:.2f})", flush=True)
    results.setdefault("backups", {})[engine.name] = backup.as_dict()
    for run in range(runs):
        for label in labels:
            target = work / "restored"
            shutil.rmtree(target, ignore_errors=True)
            env = {**engine.env, "PYTHONPATH": str(work / f"code-{label}")}
            argv_restore, cwd = engine.restore(target)
            if s3:
                cpu_before = cpu_seconds(moto.pid), cpu_seconds(server.pid)
                _, log_at = s3_gets(engine.work / "moto.log", 0)
            measured = run_measured(argv_restore, env=env, cwd=cwd, logs=work / "logs",
                                    name=f"restore-{engine.name}-{label}-{run}", cold=True)
            load_after = os.getloadavg()
            row = {"engine": engine.name, "version": label, "commit": versions[label], "run": run,
                   **measured.as_dict(), "load_after": load_after}
            note = ""
            if s3:
                row["moto_cpu_seconds"] = cpu_seconds(moto.pid) - cpu_before[0]
                row["server_cpu_seconds"] = cpu_seconds(server.pid) - cpu_before[1]
                row["s3_gets"], _ = s3_gets(engine.work / "moto.log", log_at)
                note = (f"GETs {row['s3_gets']:5d}  moto {row['moto_cpu_seconds']:6.1f} CPU-s  "
                        f"server {row['server_cpu_seconds']:5.1f} CPU-s  ")
            comparison = compare_trees(dataset, engine.restored_root(target, dataset))
            row["mib_s"] = comparison.bytes / MiB / measured.seconds
            row["comparison"] = comparison.as_dict()
            results["runs"].append(row)
            print(f"{engine.name:<9} {label:<9} {versions[label]}  restore {measured.seconds:7.1f} s  "
                  f"{row['mib_s']:6.1f} MiB/s  peak RSS {measured.peak_rss_bytes / MiB:5.0f} MiB  {note}"
                  f"load {measured.load_before[0]:.2f} -> {load_after[0]:.2f}  "
                  f"{'identical' if comparison.identical else 'DIFFERS: ' + '; '.join(comparison.listed[:3])}",
                  flush=True)
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="the folder to back up and restore")
    p.add_argument("--baseline", default="b62f7e1", help="the version before (a commit)")
    p.add_argument("--candidate", default="HEAD", help="the version after (a commit)")
    p.add_argument("--runs", type=int, default=1, help="restores per version, alternating")
    p.add_argument("--versions", type=lambda v: v.split(","), default=["baseline", "candidate"],
                   help="which to run: baseline,candidate (default both)")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/reclo-restore-s3"))
    p.add_argument("--out", type=Path, help="JSON results")
    p.add_argument("--local", action="store_true",
                   help="also restore from a local folder repository (no server), both versions")
    args = p.parse_args(argv)

    dataset = args.dataset.resolve()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    versions = {"baseline": export(args.baseline, work / "code-baseline"),
                "candidate": export(args.candidate, work / "code-candidate")}
    print(f"baseline {versions['baseline']}, candidate {versions['candidate']}; data {dataset} "
          f"({folder_size(dataset).bytes / MiB:.0f} MiB)", flush=True)
    # the server and the backup run the candidate's code
    os.environ["PYTHONPATH"] = str(work / "code-candidate")
    results: dict = {"versions": versions, "dataset": str(dataset), "machine": machine(work), "runs": []}
    engines = [ReCloS3(work / "engine")] + ([ReClo(work / "engine")] if args.local else [])
    for engine in engines:
        try:
            measure_engine(engine, dataset, work, versions, args.versions, args.runs, results)
        finally:
            engine.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["comparison"]["identical"] for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
