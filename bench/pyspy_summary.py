"""Where a ReClo backup's time goes, from a py-spy profile: per thread, the share of
samples spent in each stage of the data path, and how much of it was waiting.

    .venv/bin/pip install py-spy
    .venv/bin/py-spy record -r 100 --threads --idle --format raw -o backup.raw -- \\
        .venv/bin/reclo-agent --repo file:///tmp/repo backup --full --source DATA
    .venv/bin/python bench/pyspy_summary.py backup.raw

(`--idle` keeps the samples of threads that wait, so a thread's samples add up to its
lifetime; `--threads` names each thread.) The stages are recognised by the innermost
frame, i.e. the Python line that called into the compiled code (zstd, BLAKE3, AES,
pyfastcdc) or into the kernel (read, fsync).
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

SAMPLE_RATE = 100  # per second, as recorded above (-r 100)

# (stage, test on the innermost frame) in order: the first match wins.
STAGES = [
    ("waiting for work", lambda f: f.startswith("_worker (concurrent/futures/thread.py")),
    ("event loop waiting", lambda f: f.startswith("EpollSelector.select")),
    ("zstd compression", lambda f: "format/compression.py" in f),
    ("reading files", lambda f: "_read_full" in f or "readinto" in f or "_open_for_reading" in f),
    ("BLAKE3 chunk ids", lambda f: "chunk_id" in f),
    ("AES-GCM sealing", lambda f: "seal" in f and "format/crypto.py" in f),
    ("scrypt (opening the repository)", lambda f: "format/kdf.py" in f),
    ("FastCDC cutting", lambda f: "format/chunker.py" in f),
    ("packs: assembling, writing, fsync", lambda f: "format/pack.py" in f or "format/store.py" in f),
    ("walking folders", lambda f: "_walk" in f or "_scan" in f or "_count_totals" in f),
]


def stage_of(frame: str) -> str:
    for name, test in STAGES:
        if test(frame):
            return name
    return "other Python"


def summarise(path: Path) -> str:
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):?\s*", "", frames[0]) or "(unnamed)"
        per_thread[thread][stage_of(frames[-1])] += int(count)
    out = []
    for thread, stages in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(stages.values())
        out.append(f"{thread}: {total / SAMPLE_RATE:.1f} s sampled")
        for name, n in stages.most_common():
            out.append(f"  {100 * n / total:5.1f} %  {n / SAMPLE_RATE:6.2f} s  {name}")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(summarise(Path(sys.argv[1])))
