"""The backup benchmark's figure: throughput and repository size per engine.

    .venv/bin/python bench/plot.py backup-results.json docs/benchmarks/backup.png

Needs matplotlib, which the project does not depend on: `.venv/bin/pip install matplotlib`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# One colour per engine, the same in both panels (ReClo variants in greens).
COLOURS = {"ReClo": "#2e7d32", "ReClo-S3": "#81c784", "restic": "#1565c0", "borg": "#ef6c00"}


def plot(results: dict, path: Path) -> None:
    figs = results["figures"]
    names = list(figs)
    colours = [COLOURS.get(n, "#757575") for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    _grouped(left, names, colours, [("full backup", "full_mib_s"), ("restore", "restore_mib_s")], figs)
    left.set_ylabel("MiB/s (higher is better)")
    left.set_title("Throughput")

    _grouped(right, names, colours, [("after the full", "size_after_full_mib"),
                                     ("growth for one day", "growth_mib")], figs)
    right.set_ylabel("MiB (lower is better)")
    right.set_title("Repository size")

    m, d = results["machine"], results["dataset"]
    fig.suptitle(f"{d['bytes'] / 2**20:.0f} MiB data set (make_dataset.py), {m['cpus']} cores, "
                 f"page cache {results['cache']}, load average {results['load']['at_start'][0]:.1f} at start, "
                 f"{results['started'][:10]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped(ax, names, colours, groups, figs) -> None:
    width = 0.8 / len(names)
    for i, (name, colour) in enumerate(zip(names, colours)):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        values = [figs[name][key] for _, key in groups]
        bars = ax.bar(xs, values, width, label=name, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    ax.legend(fontsize=8)
    ax.margins(y=0.15)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
