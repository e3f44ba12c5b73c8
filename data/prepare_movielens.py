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
    # the thesis's own finished file (one line per user): split it; with --ml1m, recover each line's user
    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --out data/generated/thesis
    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --ml1m data/ml-1m.zip \\
        --out data/generated/thesis

--config FILE [KEY=VALUE ...] takes --source, --out, --seed, --negatives, --ranking-candidates and the
pairs per user from the config (data.source, the folder of data.train_file, seed, data.negatives,
data.ranking_candidates, data.train_pairs_per_user, data.eval_pairs_per_user); a flag given as well
wins. Without --config, --source and --out are required and --seed defaults to 42, the
configs' seed.

Writes OUT/train.jsonl, val.jsonl, test.jsonl (users disjoint, answer in position A for half of each
split), OUT/ranking_test.jsonl (N rated candidates per test user, for eval.ranking) and OUT/summary.json,
and prints the summary. Check a file with data/check_dataset.py. With thesis:FILE only --seed,
--val-fraction, --test-fraction, --ml1m and --allow-md5-mismatch apply (the file's histories and options
are already fixed; dporec/data/sources/thesis.py says how it is split).
"""
import argparse
from pathlib import Path

from dporec import UserError
from dporec.config import load_config, run_main
from dporec.data import sources
from dporec.report.tables import pairs_summary, thesis_summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sources:\n  " + "\n  ".join(sources.help_lines()))
    p.add_argument("--config", type=Path, help="a YAML config: build the data its runs read")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="with --config: config overrides, e.g. data.train_file=... seed=3")
    p.add_argument("--source", help=sources.forms())
    p.add_argument("--ml1m", metavar="PATH",
                   help="with thesis:FILE: ml-1m.zip or folder to recover "
                        "each line's user id from the ratings")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, help="picks targets, negatives, splits and positions (default 42)")
    p.add_argument("--history-len", type=int, default=5, help="liked movies shown before the pair")
    p.add_argument("--train-pairs-per-user", type=int, help="pairs per training user at most (default 1)")
    p.add_argument("--eval-pairs-per-user", type=int, help="pairs per val/test user at most (default 3)")
    p.add_argument("--ranking-candidates", type=int,
                   help="movies per test user in ranking_test.jsonl (eval.ranking; 0: no file; default 8)")
    p.add_argument("--negatives", choices=("disliked", "matched"),
                   help="disliked: any movie the user rated <= 2 (general appeal answers most pairs); "
                        "matched: a disliked movie as popular and as well rated as the liked one "
                        "(personal taste); default disliked")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of users in val")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of users in test")
    p.add_argument("--allow-md5-mismatch", action="store_true",
                   help="accept an ml-1m.zip whose MD5 differs from the published one")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    return p.parse_intermixed_args(argv)


def with_config(args: argparse.Namespace) -> argparse.Namespace:
    """Flags not given come from --config (sources.config_build), else the configs' defaults."""
    if args.overrides and not args.config:
        raise UserError(f"KEY=VALUE overrides ({' '.join(args.overrides)}) need --config")
    cfg = load_config(args.config, args.overrides)
    built = sources.config_build(cfg) if args.config else {}
    if args.config and not built["source"] and not args.source:
        raise UserError(f"{args.config}: data.source is not set; pass --source or set it in the config")
    for flag, key in (("source", "source"), ("out", "out_dir"), ("seed", "seed"),
                      ("ranking_candidates", "ranking_candidates"), ("negatives", "negatives"),
                      ("train_pairs_per_user", "train_pairs_per_user"),
                      ("eval_pairs_per_user", "eval_pairs_per_user")):
        if getattr(args, flag) is None:
            setattr(args, flag, built.get(key, cfg["data"].get(key, cfg.get(key))))
    if args.source is None or args.out is None:
        raise UserError("give --config FILE, or both --source and --out")
    args.out = Path(args.out)
    return args


def main(argv=None) -> int:
    args = with_config(parse_args(argv))
    if args.out.is_file() or (args.out.is_dir() and any(args.out.iterdir()) and not args.force):
        raise UserError(f"{args.out} exists and is not empty; choose another --out or pass --force")
    source = args.source
    if args.ml1m:
        if not sources.is_thesis(source):
            raise UserError("--ml1m goes with --source thesis:FILE (an "
                            "ml-1m source is given as --source itself)")
        source = f"{source}?ml1m={args.ml1m}"
    summary = sources.build(source, args.out, seed=args.seed, history_len=args.history_len,
                            train_pairs_per_user=args.train_pairs_per_user,
                            eval_pairs_per_user=args.eval_pairs_per_user, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, ranking_candidates=args.ranking_candidates,
                            negatives=args.negatives, allow_md5_mismatch=args.allow_md5_mismatch)
    print(thesis_summary(summary) if summary.get("kind") == "thesis" else pairs_summary(summary))
    print(f"wrote {args.out}/train.jsonl, val.jsonl, "
          f"test.jsonl{', ranking_test.jsonl' if summary.get('ranking') else ''} and summary.json")
    return 0


if __name__ == "__main__":
    run_main(main)
