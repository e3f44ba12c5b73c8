"""Build train/val/test preference pairs from MovieLens ratings (logic: dporec/data/pairs.py).

    # the thesis data, exactly as a config's runs read it: its data.source into the folder of its
    # data files, with its seed, negatives and ranking candidates (run_experiment.py builds the same)
    curl -L -o data/ml-1m.zip https://files.grouplens.org/datasets/movielens/ml-1m.zip
    python data/prepare_movielens.py --config configs/llama3_8b.yaml
    # CPU smoke run, no download (synthetic ML-1M-format ratings, 40 users):
    python data/prepare_movielens.py --source synthetic:40 --out data/generated/tiny
    # real MovieLens-100K, shipped inside the recbole package; the same with matched negatives (the
    # personal-taste task: a liked and a disliked movie of about the same general appeal)
    python data/prepare_movielens.py --source recbole:ml-100k --out data/generated/ml-100k
    python data/prepare_movielens.py --source recbole:ml-100k --negatives matched \\
        --out data/generated/ml-100k-matched
    # MovieLens-1M into another folder (download ml-1m.zip yourself, never commit it):
    python data/prepare_movielens.py --source data/ml-1m.zip --out data/generated/ml1m-other
    # any other release's zip or folder (ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small: told by its
    # files, its MD5 checked where published); 6,040 of ML-25M's users drawn with the seed:
    python data/prepare_movielens.py --source data/ml-25m.zip --max-users 6040 --out data/generated/ml25m
    # the thesis's own finished file (one line per user): split it; with --ml1m, recover each line's user
    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --out data/generated/thesis
    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --ml1m data/ml-1m.zip \\
        --out data/generated/thesis

--config FILE [KEY=VALUE ...] takes --source, --out, --seed and every build setting from the config
(data.source, the folder of data.train_file, seed, data.negatives, data.ranking_candidates, the pairs per
user, data.max_users, data.like_threshold, data.dislike_threshold, ...); a flag given as well wins.
Without --config, --source and --out are required and --seed defaults to 42, the configs' seed.

Writes OUT/train.jsonl, val.jsonl, test.jsonl (users disjoint, answer in position A for half of each
split), OUT/ranking_test.jsonl (N rated candidates per test user, for eval.ranking) and OUT/summary.json,
and prints the summary. Check a file with data/check_dataset.py. With thesis:FILE only --seed,
--val-fraction, --test-fraction, --ml1m and --allow-md5-mismatch apply (the file's histories and options
are already fixed; dporec/data/sources/thesis.py says how it is split).
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.prepare_movielens(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
