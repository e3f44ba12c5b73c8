"""Wall time of the MovieLens builder on real ML-100K and on ML-1M-size synthetic data.

    python benchmarks/bench_data.py

The ML-1M-size case writes synthetic ML-1M files first (timed apart) and then builds from the
folder, the same code path a real ml-1m/ folder takes. Target: each build well under a minute
on 2 CPU cores.
"""
import tempfile
import time
from pathlib import Path

from dporec.data import sources
from dporec.data.sources import recbole, synthetic


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<42} {time.perf_counter() - start:6.2f} s")
    return result


def describe(summary: dict) -> str:
    examples = sum(s["examples"] for s in summary["splits"].values())
    return f"{summary['ratings']:,} ratings, {summary['rating_users']:,} users -> {examples:,} examples"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if recbole.ml100k_dir() is None:
            print("recbole:ml-100k: skipped (recbole is not installed)")
        else:
            s = timed("build recbole:ml-100k", lambda: sources.build("recbole:ml-100k", tmp / "100k"))
            print(f"  {describe(s)}")
        folder = timed("write synthetic ML-1M size (6,040 users)",
                       lambda: synthetic.write_ml1m(tmp / "ml-1m"))
        s = timed("build from the synthetic ml-1m/ folder", lambda: sources.build(folder, tmp / "1m"))
        print(f"  {describe(s)}")


if __name__ == "__main__":
    main()
