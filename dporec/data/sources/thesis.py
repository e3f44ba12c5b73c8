"""The thesis's own file as a data source: split contrastive_rec_train.jsonl into train/val/test.

    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --out data/generated/thesis
    python data/prepare_movielens.py --source thesis:contrastive_rec_train.jsonl --ml1m ml-1m.zip --out ...

The thesis wrote one line per MovieLens-1M user (6,040 lines, 6,040 users) with no user ids, and put
the liked movie in Option A on every line. Here the lines are shuffled and cut into test, val and
train (10% / 10% / 80% by default); each split then has the answer in position A for exactly half
(±1) of its examples (options swapped in place, records.swap). One line per user makes this line
split a user split.

That is the thesis's claim, not something the file shows. Given ml-1m.zip (or the ml-1m/ folder),
each line's user is recovered: the history (parsed against movies.dat titles; never split on commas
alone, titles contain them) and the liked option must all be among one user's ratings. Matched lines
get that user_id, the split is by recovered user (lines of one user stay together), and the summary
reports how many lines matched one user, none, or several, and whether any user has two lines.
"""
from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from dporec import UserError, files
from dporec.data import built, records, task
from dporec.data import ratings as R
from dporec.data.balance import balance, random_balanced_positions
from dporec.data.sources import movielens
from dporec.data.splits import cut

MAX_PARSES = 16  # history readings kept per line; more would mean titles that are prefixes of each other


def parse_source(source: str) -> tuple[Path, Path | None]:
    """'thesis:FILE' or 'thesis:FILE?ml1m=PATH' -> (FILE, PATH or None)."""
    spec = source.removeprefix("thesis:")
    path, _, query = spec.partition("?")
    ml1m = None
    if query:
        key, _, value = query.partition("=")
        if key != "ml1m" or not value:
            raise UserError(f"source {source!r}: expected thesis:FILE or thesis:FILE?ml1m=ML1M_ZIP_OR_FOLDER")
        ml1m = Path(value)
    if not path:
        raise UserError(f"source {source!r}: expected thesis:FILE (the thesis's contrastive_rec_train.jsonl)")
    return Path(path), ml1m


# ---------------------------------------------------------------------------------------------
# Recovering user ids from MovieLens-1M

def _norm(title: str) -> str:
    return " ".join(title.split())


def _title_ids(text: str, index: dict[str, list[int]]) -> list[int]:
    """Movie ids whose title is `text`, or 'title (genres)' as our own-line layout writes it."""
    t = _norm(text)
    if t in index:
        return index[t]
    mentions = task.option_mentions(t)
    return index.get(mentions["title"], []) if "genres" in mentions else []


def read_history(history: str, index: dict[str, list[int]]) -> list[list[list[int]]]:
    """Every way to read `history` as a comma-separated list of known titles (at most MAX_PARSES).

    Each reading is a list of candidate-id lists, one per title. Titles contain ', ' themselves
    ('Bug's Life, A (1998)'), so pieces between commas are joined wherever the joint is a title.
    """
    pieces = history.split(",")
    n = len(pieces)
    memo: dict[int, list] = {n: [[]]}
    for i in range(n - 1, -1, -1):
        out = []
        for j in range(i + 1, n + 1):
            ids = _title_ids(",".join(pieces[i:j]), index)
            if ids:
                out += [[ids, *rest] for rest in memo[j]][:MAX_PARSES - len(out)]
            if len(out) >= MAX_PARSES:
                break
        memo[i] = out
    return memo[0]


def _users_of(ids: list[int], item_users: dict[int, frozenset]) -> set:
    return set().union(*(item_users.get(i, frozenset()) for i in ids))


def _item_users(ratings) -> dict[int, frozenset]:
    """{movie id: users who rated it}."""
    order = np.argsort(ratings["item_id"].to_numpy(), kind="stable")
    items, users = ratings["item_id"].to_numpy()[order], ratings["user_id"].to_numpy()[order]
    cuts = np.flatnonzero(np.diff(items)) + 1
    return {int(g[0]): frozenset(u.tolist())
            for g, u in zip(np.split(items, cuts), np.split(users, cuts)) if g.size}


def _candidates(ex: records.Example, index, item_users) -> set:
    """Users who rated the liked option and every movie of some reading of the history."""
    liked = _users_of(_title_ids(ex.option(ex.label), index), item_users)
    found: set = set()
    for reading in read_history(task.history_text(ex.input), index) if liked else []:
        cand = set(liked)
        for ids in sorted(reading, key=len):
            cand &= _users_of(ids, item_users)
            if not cand:
                break
        found |= cand
    return found


def _recovered_history(ex: records.Example, items: set, index, movies) -> list[dict] | None:
    """The history's movies as its recovered user rated them ([{"item_id", "title", "genres"}], the
    builder's structured `history` field), from the first reading whose every title is one the user
    rated; None when no reading is."""
    for reading in read_history(task.history_text(ex.input), index):
        ids = [next((i for i in sorted(cands) if i in items), None) for cands in reading]
        if None not in ids:
            return [{"item_id": int(i), "title": movies[i].title, "genres": list(movies[i].genres)}
                    for i in ids]
    return None


def match_users(examples: list[records.Example], ml1m: Path, allow_md5_mismatch: bool = False,
                like_threshold: int = 4) -> dict:
    """Each line's MovieLens-1M user, found from its history and liked option.

    A line's candidates are the users who rated all of its movies. Several candidates are narrowed,
    in turn, to those who rated all of them >= like_threshold, then to those no other line matched
    alone (the thesis wrote one line per user). Returns {'user_ids': [id or None per line],
    'counts': matched/unmatched/ambiguous, 'tie_broken': lines matched only after narrowing,
    'users_with_several_lines': users matched by more than one line (should be 0), 'histories': each
    matched line's history with its genres from movies.dat (_recovered_history; None where unmatched)}.
    """
    ratings, movies = movielens.read(ml1m, allow_md5_mismatch)
    index: dict[str, list[int]] = defaultdict(list)
    for item, movie in movies.items():
        index[_norm(movie.title)].append(item)
    rated = _item_users(ratings)
    liked = _item_users(ratings[R.liked(ratings["rating"].to_numpy(), like_threshold)])
    cands = [_candidates(ex, index, rated) for ex in examples]
    narrowed = 0
    for i, c in enumerate(cands):
        if len(c) > 1 and (strict := c & _candidates(examples[i], index, liked)):
            narrowed += len(strict) == 1
            cands[i] = strict
    taken = Counter(next(iter(c)) for c in cands if len(c) == 1)
    changed = True
    while changed:  # a user matched alone by one line is not another line's user
        changed = False
        for i, c in enumerate(cands):
            if len(c) > 1 and (rest := {u for u in c if u not in taken}) and rest != c:
                cands[i] = rest
                if len(rest) == 1:
                    narrowed += 1
                    taken[next(iter(rest))] += 1
                    changed = True
    user_ids = [str(next(iter(c))) if len(c) == 1 else None for c in cands]
    counts = {"matched": sum(len(c) == 1 for c in cands), "unmatched": sum(not c for c in cands),
              "ambiguous": sum(len(c) > 1 for c in cands)}
    per_user = Counter(u for u in user_ids if u is not None)
    matched = {int(u) for u in per_user}
    user_items = {u: set(g["item_id"].tolist()) for u, g in ratings[ratings["user_id"].isin(matched)]
                  .groupby("user_id")}
    histories = [None if u is None else _recovered_history(ex, user_items[int(u)], index, movies)
                 for ex, u in zip(examples, user_ids)]
    return {"user_ids": user_ids, "histories": histories, "counts": counts, "tie_broken": narrowed,
            "users_with_several_lines": sum(n > 1 for n in per_user.values()),
            "ml1m_users": int(ratings["user_id"].nunique())}


# ---------------------------------------------------------------------------------------------
# Splitting

def _split_groups(groups: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, set]:
    """Distinct group keys (users, or lines standing for users), shuffled and cut into test/val/train."""
    order = sorted(set(groups))
    random.Random(f"{seed}-thesis-split").shuffle(order)
    return cut(order, val_fraction, test_fraction)


def build(source: str, out_dir: str | Path, seed: int, val_fraction: float, test_fraction: float,
          allow_md5_mismatch: bool = False) -> dict:
    """Write out_dir/{train,val,test}.jsonl and summary.json from a thesis-layout file; return the summary."""
    start = time.perf_counter()
    path, ml1m = parse_source(source)
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise UserError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    examples = records.load_examples(path)
    layouts = Counter(records.layout(e) for e in examples)
    in_file = balance(examples)
    notes, recovery = [], None
    if ml1m is not None:
        recovery = match_users(examples, ml1m, allow_md5_mismatch)
        # the user id, and the history's genres (the prompt shows titles only): reasoning claims become
        # checkable (data.judge); the prompt itself stays the thesis's
        examples = [e if u is None else replace(e, user_id=u, extra={**e.extra, "history": h} if h
                                                else e.extra)
                    for e, u, h in zip(examples, recovery["user_ids"], recovery["histories"])]
        c = recovery["counts"]
        notes.append(f"user ids recovered from {ml1m}: {c['matched']:,} of {len(examples):,} lines matched "
                     f"exactly one user ({recovery['tie_broken']:,} of them after narrowing to ratings >= 4 "
                     f"or to users no other line matched; {c['unmatched']:,} lines matched none, "
                     f"{c['ambiguous']:,} several); "
                     + ("one line per matched user" if not recovery["users_with_several_lines"] else
                        f"WARNING: {recovery['users_with_several_lines']:,} users have several lines, "
                        f"against the thesis's one line per user (each user's lines are kept in one split)"))
    with_user = sum(e.user_id is not None for e in examples)
    groups = [e.user_id if e.user_id is not None else f"line:{e.pair_id}" for e in examples]
    if with_user == 0:
        notes.append("split by line = split by user: the thesis wrote one line per MovieLens-1M user, so no "
                     "user is in two splits (the file has no user ids to check this; --ml1m ml-1m.zip, or "
                     "data.source=thesis:FILE?ml1m=ml-1m.zip, recovers them)")
    elif with_user < len(examples):
        notes.append(f"split by user: {with_user:,} lines by recovered user, the other "
                     f"{len(examples) - with_user:,} "
                     f"by line (one line per user in the thesis's file)")
    else:
        notes.append("split by user: every line has a user id, no user is in two splits")
    dup = len(examples) - len({e.input for e in examples})
    if dup:
        notes.append(f"WARNING: {dup} lines repeat another line's input exactly")
    keys = _split_groups(groups, val_fraction, test_fraction, seed)
    split_of = {g: s for s, gs in keys.items() for g in gs}
    splits = {s: [] for s in ("train", "val", "test")}
    for e, g in zip(examples, groups):
        splits[split_of[g]].append(e)
    splits = {s: random_balanced_positions(exs, random.Random(f"{seed}-{s}")) for s, exs in splits.items()}
    out = Path(out_dir)
    for s, exs in splits.items():
        files.write_jsonl(out / f"{s}.jsonl", (records.to_record(e) for e in exs))
    summary = {
        "kind": "thesis", "source": str(source), "file": str(path), "ml1m": str(ml1m) if ml1m else None,
        "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "lines": len(examples),
        "layouts": dict(layouts), "answers_in_file": {"A": in_file["A"], "B": in_file["B"]},
        "recovery": ({**{k: v for k, v in recovery.items() if k not in ("user_ids", "histories")},
                      "histories_with_genres": sum(h is not None for h in recovery["histories"])}
                     if recovery else None),
        "splits": {s: {"users": len({g for e, g in zip(examples, groups) if split_of[g] == s}),
                       "examples": len(exs), **{L: balance(exs)[L] for L in task.LETTERS}}
                   for s, exs in splits.items()},
        "notes": notes, "seconds": round(time.perf_counter() - start, 2)}
    built.write_summary(out, summary)
    return summary
