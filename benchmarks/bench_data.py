"""Wall time and peak memory of the MovieLens builder, phase by phase, on synthetic files of ML-1M's and
ML-32M's size and format (and on real ML-100K when recbole is installed).

    python benchmarks/bench_data.py                       # ML-1M size, then ML-32M size (~8 minutes in all)
    python benchmarks/bench_data.py --sizes ml-1m         # one size only
    python benchmarks/bench_data.py --users 0.1           # a tenth of each release's users: a quick look

Each release's files are written first by dporec.data.sources.synthetic.write_release in the release's
exact format and zipped as GroupLens ships it (timed apart, never kept), then built by
`sources.build(ZIP)` in a fresh process, the path `data/prepare_movielens.py --source ZIP` takes, so the
peak memory is the build's own. Phases: read (unzip, parse, check), pairs (time order, user-disjoint
splits, targets, histories, negatives, the personal task's pairs), splits (position balance, the split
files), candidates (the test users' candidate sets), baselines (the training users' ratings side file).
Target: ML-32M's size within 5 minutes and 8 GiB on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dporec.data import sources
from dporec.data.sources import recbole, synthetic

PHASES = ("read", "pairs", "splits", "candidates", "baselines")
LIMITS = {"ml-32m": (300, 8 * 1024)}  # seconds, MiB
BUILD = ("import json, sys\nfrom dporec.data import sources\n"
         "s = sources.build(sys.argv[1], sys.argv[2], seed=0, allow_md5_mismatch=True)\n"
         "print(json.dumps(s))")


def build_in_child(source: Path, out: Path) -> tuple[dict, float]:
    """(summary, wall seconds) of a build in a fresh Python process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BUILD, str(source), str(out)], capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"the build of {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def describe(summary: dict) -> str:
    examples = sum(s["examples"] for s in summary["splits"].values())
    ranking = (summary.get("ranking") or {}).get("users", 0)
    personal = (summary.get("personal_test") or {}).get("examples", 0)
    return (f"{summary['ratings']:,} ratings, {summary['rating_users']:,} users, "
            f"{summary['movies']:,} movies -> {examples:,} pairs, {ranking:,} candidate sets, "
            f"{personal:,} personal-task pairs")


def peak(summary: dict) -> int:
    """The build's peak resident memory (MiB): the last phase's peak so far."""
    return max(v["peak_rss_mib"] for v in summary["phases"].values())


def table(results: dict[str, tuple[dict, float]]) -> str:
    names = list(results)
    head = f"{'phase':<12}" + "".join(f"{n + ' s':>14}{n + ' MiB':>16}" for n in names)
    rows = [head, "-" * len(head)]
    for p in PHASES:
        cells = ""
        for n in names:
            got = results[n][0]["phases"].get(p)
            cells += f"{got['seconds']:>14.1f}{got['peak_rss_mib']:>16,}" if got else f"{'-':>14}{'-':>16}"
        rows.append(f"{p:<12}{cells}")
    total = "".join(f"{results[n][1]:>14.1f}{peak(results[n][0]):>16,}" for n in names)
    rows.append(f"{'whole build':<12}{total}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="ml-1m,ml-32m", help="releases whose size and format to build "
                                                            "(comma-separated; default ml-1m,ml-32m)")
    p.add_argument("--users", type=float, default=1.0, help="share of each release's users (default 1)")
    p.add_argument("--tmp", type=Path, default=None, help="where the synthetic files go (default: the "
                                                          "system's temporary folder; ML-32M needs ~2 GB)")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if recbole.ml100k_dir() is not None:
            summary, seconds = build_in_child("recbole:ml-100k", tmp / "100k")
            print(f"recbole:ml-100k built in {seconds:.1f} s: {describe(summary)}")
        for name in args.sizes.split(","):
            size = synthetic.release_size(name)
            size["n_users"] = max(50, round(size["n_users"] * args.users))
            start = time.perf_counter()
            archive = synthetic.write_release(tmp / name, name, seed=0, zipped=True, **size)
            print(f"wrote a synthetic {archive.name}, {sources.release(name).title} format "
                  f"({archive.stat().st_size / 1e6:,.0f} MB), in {time.perf_counter() - start:.0f} s")
            results[name] = build_in_child(archive, tmp / f"{name}-built")
            print(f"built it in {results[name][1]:.1f} s: {describe(results[name][0])}")
    print()
    print("time (s) and peak resident memory so far (MiB) at the end of each phase, 2 CPU cores:")
    print(table(results))
    failed = False
    for name, (limit_s, limit_mib) in LIMITS.items():
        if name in results and args.users == 1.0:
            summary, seconds = results[name]
            mib = peak(summary)
            ok = seconds <= limit_s and mib <= limit_mib
            failed |= not ok
            print(f"{name} size: {seconds:.0f} s (limit {limit_s}), {mib / 1024:.1f} GiB (limit "
                  f"{limit_mib / 1024:.0f}): {'within' if ok else 'OVER'} the limits")
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest child process: {child:,.0f} MiB resident")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
