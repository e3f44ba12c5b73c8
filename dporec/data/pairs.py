"""Pairwise examples from ratings: for one user, a liked target, the history before it and a negative.

Everything in the user's time order (ties: file order):
  target    a movie the user rated >= like_threshold that has at least `history_len` liked movies
            rated strictly earlier (so no history item can postdate the target);
  history   the `history_len` most recent of those earlier liked movies, oldest first;
  negative  negatives="disliked": a movie the user rated <= dislike_threshold ("disliked"); for a user
            with none, one of the movies most rated by training users before the target's time that
            the user never rated ("unseen_popular"). negatives="matched": a movie the user rated
            <= dislike_threshold that training users, before the target's time, rated about as well
            and as often as the target, higher or lower at random ("matched"): general appeal then
            answers no better than chance, and only the user's own taste separates the two.
Up to `train_pairs_per_user` targets per training user and `eval_pairs_per_user` per validation or
test user, drawn at random (the thesis trained on one line per user; more test pairs per user buy
power). Users are split into train/val/test (no user in two splits) and each split puts the answer in
position A for exactly half (±1) of its examples. The reasoning states which of the history's genres
each option has (task.genre_reasoning).
"""
from __future__ import annotations

import random
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from dporec import UserError, files
from dporec.data import built, candidates, records, task
from dporec.data import ratings as R
from dporec.data.balance import balanced_positions, place, random_balanced_positions
from dporec.data.ratings import Movie
from dporec.data.splits import cut

SPLITS = ("train", "val", "test")
NEGATIVES = ("disliked", "matched")
POPULAR_POOL = 100  # an "unseen popular" negative is one of the 100 most-rated movies
TASKS = {"disliked": "disliked negatives: general appeal (mean rating, popularity) answers most pairs",
         "matched": "matched negatives: general appeal matched, so only personal taste answers a pair"}
# A matched negative's mean rating is within this many stars of the target's, its count of ratings
# within this factor, both among training users before the target's time: close enough that the
# mean-rating and popularity rules score near chance, loose enough to keep most targets.
MATCH_STARS, MATCH_FACTOR = 0.5, 2.0
# ... and its release year within this many years: the year is readable in the prompt, and the older movie
# is the liked one in 62% of ML-100K's matched test pairs without it, 53% with it (182 pairs instead of 198)
MATCH_YEARS = 5
MATCH_TRIES = 4  # candidate targets per example wanted, for the matched task
PERSONAL_FILE = built.PERSONAL_FILE  # the personal task's test pairs, beside the default task's splits


# ---------------------------------------------------------------------------------------------
# Picking targets, histories and negatives (vectorised: ML-1M has a million ratings)

def _rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent stream per purpose, so e.g. the user split does not move when the number of
    examples per user changes."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Each row's position within its run of equal keys (rows sorted so that equal keys are adjacent): a
    groupby cumcount in numpy, linear in the rows."""
    n = keys[0].size
    new = np.zeros(n, bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


ALL = 1 << 30  # "every eligible target" as a number of targets per user


def _pick_targets(ratings, like_threshold, history_len, max_per_user, rng, keep=None):
    """Targets (DataFrame: user_id, item_id, timestamp) and their histories ((n, history_len) arrays
    of item ids and timestamps). `ratings` is sorted by user, then time, then file order. keep(user ids,
    timestamps) -> bool mask: which eligible targets may be drawn (the temporal split's time cut)."""
    mask = R.liked(ratings["rating"].to_numpy(), like_threshold)
    users, items, times = (ratings[c].to_numpy()[mask] for c in ("user_id", "item_id", "timestamp"))
    position = _runs(users)
    # liked movies with the same timestamp as this one are not "strictly before" it
    n_before = position - _runs(users, times)
    eligible = np.flatnonzero(n_before >= history_len)
    if keep is not None:
        eligible = eligible[keep(users[eligible], times[eligible])]
    key = rng.random(eligible.size)
    if max_per_user >= ALL:
        rows = eligible
    else:  # per user, the max_per_user eligible targets with the smallest random keys
        order = np.lexsort((key, users[eligible]))
        rows = np.sort(eligible[order][_runs(users[eligible][order]) < max_per_user])
    user_start = rows - position[rows]
    hist_rows = (user_start + n_before[rows] - history_len)[:, None] + np.arange(history_len)
    targets = pd.DataFrame({"user_id": users[rows], "item_id": items[rows], "timestamp": times[rows]})
    return targets, items[hist_rows], times[hist_rows]


def _pick_negatives(ratings, targets, dislike_threshold, train_users, rng) -> tuple[np.ndarray, np.ndarray]:
    """(negative item ids, kinds). A user's examples take distinct disliked movies while they last
    (a random rotation of the user's disliked list); users with none get unseen popular movies."""
    disliked = ratings[R.disliked(ratings["rating"].to_numpy(), dislike_threshold)]
    counts = disliked.groupby("user_id").size()
    per_user = pd.DataFrame({"n": counts, "start": counts.cumsum() - counts,
                             "offset": rng.integers(0, 1 << 30, counts.size)}, index=counts.index)
    info = per_user.reindex(targets["user_id"].to_numpy())
    has = info["n"].notna().to_numpy()
    n, start, offset = (info[c].to_numpy()[has].astype(np.int64) for c in ("n", "start", "offset"))
    k = targets.groupby("user_id").cumcount().to_numpy()[has]
    negatives = np.zeros(len(targets), np.int64)
    negatives[has] = disliked["item_id"].to_numpy()[start + (offset + k) % n]
    negatives[~has] = _unseen_popular(ratings, targets[~has], train_users, rng)
    return negatives, np.where(has, "disliked", "unseen_popular")


def _matched_negatives(ratings, targets, dislike_threshold, train_users, like_threshold, per_user,
                       rng, years: dict) -> np.ndarray:
    """A matched negative for up to `per_user` of each user's candidate targets (-1 for the others):
    among the user's disliked movies whose mean rating and rating count among training users before the
    target's time are within MATCH_STARS and MATCH_FACTOR of the target's, and whose release year is
    within MATCH_YEARS of the target's (`years`: {item id: year or None}; an unknown year is not
    compared), a coin flip picks the side
    (rated higher or lower than the target) and the nearest movie on that side is taken. A target with
    an empty side is skipped, so the side is independent of the data and the mean-rating rule is right
    half the time. Targets are tried in random order; each try compares the user's whole pool at once."""
    train = ratings["user_id"].isin(train_users).to_numpy()
    appeal = R.TrainRatings(ratings.loc[train, ["item_id", "rating", "timestamp"]], like_threshold,
                            co_occurrence=False)
    del train
    bad = ratings[R.disliked(ratings["rating"].to_numpy(), dislike_threshold)]  # by user, in time order
    bad_users, bad_items = bad["user_id"].to_numpy(), bad["item_id"].to_numpy()
    year_of = np.full(max(max(years, default=0), int(ratings["item_id"].max())) + 1, np.nan)
    known = {i: y for i, y in years.items() if y is not None}
    year_of[list(known)] = list(known.values())
    out = np.full(len(targets), -1, np.int64)
    used: dict[int, list] = {}  # a user's examples take distinct negatives
    users, items, times = (targets[c].to_numpy() for c in ("user_id", "item_id", "timestamp"))
    for row in rng.permutation(len(targets)):
        # the user id keeps the ids' dtype: a Python int would make searchsorted copy bad_users to int64
        user, item, t = users[row], int(items[row]), int(times[row])
        taken = used.get(user, ())
        if len(taken) >= per_user:
            continue
        pool = bad_items[np.searchsorted(bad_users, user, "left"):np.searchsorted(bad_users, user, "right")]
        if taken:
            pool = pool[~np.isin(pool, taken)]
        if not pool.size:
            continue
        n, m = appeal.counts_means(np.r_[item, pool], t)
        n0, m0, n, m = n[0], m[0], n[1:], m[1:]
        ratio = (n + 1) / (n0 + 1)
        close_in_time = np.abs(year_of[pool] - year_of[item]) <= MATCH_YEARS
        close_in_time |= np.isnan(year_of[pool]) | np.isnan(year_of[item])
        near = ((np.abs(m - m0) <= MATCH_STARS) & (1 / MATCH_FACTOR <= ratio) & (ratio <= MATCH_FACTOR)
                & close_in_time)
        higher = rng.random() < 0.5
        side = near & ((m >= m0) == higher)
        if side.any() and (near & ~side).any():
            distance = np.abs(m - m0) / MATCH_STARS + np.abs(np.log(ratio)) / np.log(MATCH_FACTOR)
            picks = np.flatnonzero(side)
            best = int(pool[picks[np.lexsort((pool[picks], distance[picks]))[0]]])
            out[row] = best
            used.setdefault(user, []).append(best)
    return out


def _years(movies: dict[int, Movie]) -> dict[int, int | None]:
    return {item: m.year for item, m in movies.items()}


def _popular_before(ratings, train_users, targets) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """For each target, the POPULAR_POOL movies most rated by training users strictly before its time
    (most first, ties by id); and, for the targets whose user rated all of those, every movie rated before
    then in that order. Popularity never counts a test user's ratings, or ratings from the target's future.

    One pass in time order counts each rating once. The top of the counts is kept exact without sorting
    every movie per target: counts only grow, so once POPULAR_POOL movies have at least `floor` ratings the
    top always lies among the movies with at least `floor` ratings (`top`), and a movie joins them when its
    count reaches it."""
    train = ratings["user_id"].isin(train_users).to_numpy()
    stamps = ratings["timestamp"].to_numpy()[train]
    order = np.argsort(stamps, kind="stable")
    items, stamps = ratings["item_id"].to_numpy()[train][order], stamps[order]
    del train, order
    size = int(ratings["item_id"].max()) + 1
    users, all_items = ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy()
    times, target_users = targets["timestamp"].to_numpy(), targets["user_id"].to_numpy()
    counts, done = np.zeros(size, np.int64), 0
    floor, top, in_top, prune_at = 1, np.zeros(0, np.int64), np.zeros(size, bool), 4 * POPULAR_POOL
    out, whole = [None] * len(times), {}
    for i in np.argsort(times, kind="stable"):
        upto = int(np.searchsorted(stamps, times[i], "left"))
        if upto > done:
            chunk = items[done:upto]
            np.add.at(counts, chunk, 1)
            new = np.unique(chunk[(counts[chunk] >= floor) & ~in_top[chunk]])
            in_top[new] = True
            top = np.r_[top, new]
            done = upto
            if top.size > prune_at:  # raise the floor to the POPULAR_POOL-th largest count, drop the rest
                floor = max(floor, int(np.partition(counts[top], -POPULAR_POOL)[-POPULAR_POOL]))
                keep = counts[top] >= floor
                in_top[top[~keep]] = False
                top = top[keep]
                prune_at = 2 * top.size + 4 * POPULAR_POOL
        out[i] = top[np.lexsort((top, -counts[top]))][:POPULAR_POOL]
        user = target_users[i]
        rated = all_items[np.searchsorted(users, user, "left"):np.searchsorted(users, user, "right")]
        if np.isin(out[i], rated).all():  # the rare user who rated every one of them: the whole list
            every = np.flatnonzero(counts)
            whole[int(i)] = every[np.lexsort((every, -counts[every]))]
    return out, whole


def _unseen_popular(ratings, targets, train_users, rng) -> np.ndarray:
    """For each target row, one of the POPULAR_POOL movies most rated by training users before the
    target's time that its user never rated (fewer rated ones: all movies training users rated earlier;
    none: every movie, by training users' ratings at any time). A loop over the few users without a
    disliked movie, not over ratings."""
    users, items = ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy()
    top, whole = _popular_before(ratings, train_users, targets)
    train_counts = ratings["item_id"][ratings["user_id"].isin(train_users)].value_counts()
    everything = ratings["item_id"].unique()
    fallback = np.r_[train_counts.index.to_numpy(), np.setdiff1d(everything, train_counts.index.to_numpy())]
    out = np.zeros(len(targets), np.int64)
    used: dict[int, list[int]] = {}  # a user's examples take distinct negatives while the pool lasts
    for row, user in enumerate(targets["user_id"].to_numpy()):
        rated = items[np.searchsorted(users, user, "left"):np.searchsorted(users, user, "right")]
        seen = np.r_[rated, used.get(user, [])]
        unseen = np.array([])
        for pool in (top[row], whole.get(row, top[row]), fallback):
            unseen = pool[~np.isin(pool, seen)]
            if unseen.size == 0:
                unseen = pool[~np.isin(pool, rated)]
            if unseen.size:
                break
        if unseen.size == 0:
            raise UserError(f"user {user} rated every movie and none low enough to be a negative")
        out[row] = rng.choice(unseen)
        used.setdefault(user, []).append(out[row])
    return out


def _split_users(users: np.ndarray, val_fraction: float, test_fraction: float, rng) -> dict[str, set]:
    """Users, shuffled, cut into test, val and train: no user in two splits."""
    return cut(rng.permutation(np.sort(users)), val_fraction, test_fraction)


# ---------------------------------------------------------------------------------------------
# Texts and records

def shared_genres(history: list[Movie], movie: Movie) -> list[str]:
    """The genres of `movie` that at least one history movie has, in the movie's own order."""
    seen = {g for m in history for g in m.genres}
    return [g for g in movie.genres if g in seen]


def reason_text(history: list[Movie], x: Movie, y: Movie) -> str:
    """The reasoning for choosing x over y (the rejected answer's is this with x and y exchanged)."""
    return task.genre_reasoning(x.display, shared_genres(history, x), y.display, shared_genres(history, y))


def pair_input(history: list[Movie], a: Movie, b: Movie) -> str:
    """The `input` text of a pair in the builder's own-line layout."""
    return task.own_line_input([m.display for m in history], a.display, b.display)


def movie_example(history: list[Movie], a: Movie, b: Movie, label: str, pair_id: str,
                  user_id: str | None = None, reasons: dict | None = None, extra: dict | None = None
                  ) -> records.Example:
    """The A/B example of two movies after a history, in the builder's own words: the one way the builder,
    the ranking's questions and recommend.py's requests make an example from movies."""
    reasoning = (reasons or {}).get(label, "")
    return records.Example(
        instruction=task.INSTRUCTION, input=pair_input(history, a, b),
        output=task.answer_text(label, reasoning), label=label, option_a=f"{a.display}.",
        option_b=f"{b.display}.", reasoning=reasoning, pair_id=pair_id, user_id=user_id, reasons=reasons,
        extra=extra or {})


def _example(user, k, target, target_ts, history, history_ts, negative, kind, movies) -> records.Example:
    """One example with the liked movie as Option A; positions are balanced afterwards."""
    hist = [movies[i] for i in history]
    a, b = movies[target], movies[negative]
    history_field = [{**m.record(i), "timestamp": int(t)} for i, m, t in zip(history, hist, history_ts)]
    return movie_example(
        hist, a, b, "A", f"u{user}-{k}", str(user),
        reasons={"A": reason_text(hist, a, b), "B": reason_text(hist, b, a)},
        extra={"history": history_field, "option_a": a.record(target), "option_b": b.record(negative),
               "negative_kind": str(kind), "target_timestamp": int(target_ts)})


def _check_args(history_len, train_pairs_per_user, eval_pairs_per_user, val_fraction, test_fraction,
                like_threshold, dislike_threshold) -> None:
    if history_len < 1 or min(train_pairs_per_user, eval_pairs_per_user) < 1:
        raise UserError("history_len, train_pairs_per_user and eval_pairs_per_user must be at least 1")
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise UserError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    lo, hi = built.STARS
    for name, value in (("like_threshold", like_threshold), ("dislike_threshold", dislike_threshold)):
        if not lo <= value <= hi:
            raise UserError(f"{name} must be {lo:g}-{hi:g} stars (MovieLens's scale), got {value}")
    if dislike_threshold >= like_threshold:
        raise UserError(f"dislike_threshold ({dislike_threshold}) must "
                        f"be below like_threshold ({like_threshold})")


def _temporal_cut(ratings, like_threshold, history_len, val_fraction, test_fraction, seed):
    """The temporal split: (user splits, the test period's start, keep(user ids, timestamps)). Users are
    split at random as usual; the test period is the last val_fraction + test_fraction of the eligible
    targets' times: training users' pairs come from before it, val and test users' pairs from within it,
    so no trained model has seen a rating made in the test period."""
    every, _, _ = _pick_targets(ratings, like_threshold, history_len, ALL, _rng(seed, "targets"))
    if every.empty:
        return None, None, None
    start = int(np.quantile(every["timestamp"].to_numpy(), 1 - val_fraction - test_fraction))
    split_users = _split_users(every["user_id"].unique(), val_fraction, test_fraction, _rng(seed, "split"))
    train = np.asarray(sorted(split_users["train"]))

    def keep(users, times):
        return np.where(np.isin(users, train), times < start, times >= start)
    return split_users, start, keep


def _build(ratings, movies, seed, history_len, train_pairs_per_user, eval_pairs_per_user, val_fraction,
           test_fraction, like_threshold, dislike_threshold, negatives="disliked", split="users"):
    """({split: examples}, all ratings as the examples name movies, {split: users}, candidate targets,
    the personal task's test examples or None, the test period's start or None). `ratings` as
    time_ordered returns them."""
    _check_args(history_len, train_pairs_per_user, eval_pairs_per_user, val_fraction, test_fraction,
                like_threshold, dislike_threshold)
    # targets are drawn for the larger cap, so a split's pairs do not depend on the other split's cap
    max_examples_per_user = max(train_pairs_per_user, eval_pairs_per_user)
    if negatives not in NEGATIVES:
        raise UserError(f"negatives must be one of {list(NEGATIVES)}, got {negatives!r}")
    if split not in built.SPLIT_KINDS:
        raise UserError(f"split must be one of {list(built.SPLIT_KINDS)}, got {split!r}")
    split_users = start = keep = None
    if split == "temporal":
        split_users, start, keep = _temporal_cut(ratings, like_threshold, history_len, val_fraction,
                                                 test_fraction, seed)
        if start is not None:
            # the training users' test-period ratings are unseen by everything built from here: no negative,
            # no appeal matching, no popularity and no baseline side file reads them, as no model trains
            # on them
            later = ratings["user_id"].isin(split_users["train"]) & (ratings["timestamp"] >= start)
            ratings = ratings[~later].reset_index(drop=True)
    # matched negatives fit only some targets: draw more candidates per user, keep up to the maximum
    tries = max_examples_per_user * (MATCH_TRIES if negatives == "matched" else 1)
    targets, hist_items, hist_ts = _pick_targets(ratings, like_threshold, history_len, tries,
                                                 _rng(seed, "targets"), keep)
    if targets.empty:
        raise UserError(f"no user has a liked movie (rating >= {like_threshold}) preceded by "
                        f"{history_len} liked movies; lower history_len")
    if split_users is None:
        split_users = _split_users(targets["user_id"].unique(), val_fraction, test_fraction,
                                   _rng(seed, "split"))
    if negatives == "matched":
        chosen = _matched_negatives(ratings, targets, dislike_threshold, split_users["train"], like_threshold,
                                    max_examples_per_user, _rng(seed, "negatives"), _years(movies))
        kinds = np.full(len(targets), "matched")
    else:
        chosen, kinds = _pick_negatives(ratings, targets, dislike_threshold, split_users["train"],
                                        _rng(seed, "negatives"))
    split_of = {u: s for s, users in split_users.items() for u in users}
    cap = {s: train_pairs_per_user if s == "train" else eval_pairs_per_user for s in SPLITS}
    k = targets.groupby("user_id").cumcount().to_numpy()
    rows, per_user = {s: [] for s in SPLITS}, Counter()
    for i, user in enumerate(targets["user_id"].to_numpy()):
        if chosen[i] < 0 or per_user[user] >= cap[split_of[user]]:
            continue
        per_user[user] += 1
        rows[split_of[user]].append(i)
    # each split's examples as the rows that make them: ML-32M's 237k examples held as records take ~1 GB,
    # so they are made one at a time as the split files are written (Pending.examples)
    splits = {s: Pending(rows[s], targets, k, hist_items, hist_ts, chosen, kinds, movies) for s in SPLITS}
    personal = None
    if negatives == "disliked":  # the same test users on the personal task, for the second verdict
        personal = _personal_test(ratings, movies, split_users, seed, history_len, eval_pairs_per_user,
                                  like_threshold, dislike_threshold, keep)
    return splits, ratings, split_users, len(targets), personal, start


def _personal_test(ratings, movies, split_users, seed, history_len, eval_pairs_per_user, like_threshold,
                   dislike_threshold, keep=None) -> list[records.Example]:
    """The test users' pairs of the personal task (matched negatives), beside the default task's: how the
    default task's verdict would read where general appeal cannot answer. Targets are drawn as the
    matched task draws them, from the test users alone; the matching reads training users only."""
    # every eligible target is a candidate (the matching, not the draw, limits how many pairs a user gets):
    # on ML-100K 182 pairs from 73 of 93 test users. Every target is kept whatever the random keys, so
    # drawing from the test users' ratings alone gives the same targets as drawing from everyone's
    test_ratings = ratings[ratings["user_id"].isin(split_users["test"])]
    targets, hist_items, hist_ts = _pick_targets(test_ratings, like_threshold, history_len, ALL,
                                                 _rng(seed, "targets"), keep)
    chosen = _matched_negatives(ratings, targets, dislike_threshold, split_users["train"], like_threshold,
                                eval_pairs_per_user, _rng(seed, "personal negatives"), _years(movies))
    k = targets.groupby("user_id").cumcount().to_numpy()
    exs = [_example(user, f"m{k[i]}", item, ts, hist_items[i], hist_ts[i], chosen[i], "matched", movies)
           for i, (user, item, ts) in enumerate(targets.itertuples(index=False)) if chosen[i] >= 0]
    return random_balanced_positions(exs, random.Random(f"{seed}-personal"))


class Pending:
    """A split's examples before they are made: the rows of the targets (and their histories and negatives)
    that make them, in the order drawn."""

    def __init__(self, rows, targets, k, hist_items, hist_ts, chosen, kinds, movies):
        self.rows, self.k, self.hist_items, self.hist_ts = rows, k, hist_items, hist_ts
        self.users, self.items, self.times = (targets[c].to_numpy()
                                              for c in ("user_id", "item_id", "timestamp"))
        self.chosen, self.kinds, self.movies = chosen, kinds, movies

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, j: int) -> records.Example:
        """The j-th example (liked movie as Option A)."""
        i = self.rows[j]
        return _example(self.users[i], self.k[i], self.items[i], self.times[i], self.hist_items[i],
                        self.hist_ts[i], self.chosen[i], self.kinds[i], self.movies)

    def examples(self, rng) -> Iterator[records.Example]:
        """The examples in random_balanced_positions' order and positions for `rng`, made one at a time."""
        return (place(self.example(j), letter) for j, letter in balanced_positions(len(self), rng))


def write_split(path: Path, examples) -> dict:
    """Write examples to a split file; return its summary: users, examples, A/B counts, negative kinds."""
    users, letters, kinds = set(), Counter(), Counter()

    def counted():
        for e in examples:
            users.add(e.user_id)
            letters[e.label] += 1
            kinds[e.extra["negative_kind"]] += 1
            yield records.to_record(e)
    files.write_jsonl(path, counted())
    return {"users": len(users), "examples": letters["A"] + letters["B"], "A": letters["A"],
            "B": letters["B"], "negative_kinds": dict(sorted(kinds.items()))}


def time_ordered(ratings: pd.DataFrame, movies: dict[int, Movie], max_users: int | None, seed: int
                 ) -> tuple[pd.DataFrame, dict]:
    """(each user's ratings in time order, one per movie (ratings.prepare), of at most max_users users drawn
    at random; what the summary says of them: the source's ratings and users, and the drawn ones'). The
    caller drops the raw ratings by reassigning: ML-32M's take 0.8 GB."""
    facts = {"source_ratings": len(ratings), "source_users": int(ratings["user_id"].nunique())}
    ratings = sample_users(ratings, max_users, seed)
    facts |= {"ratings": len(ratings), "rating_users": int(ratings["user_id"].nunique())}
    return R.prepare(ratings, movies), facts


def sample_users(ratings: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """The ratings of at most `max_users` users drawn at random (seeded) from those with ratings; all of
    them when max_users is None or not below their number (data.max_users)."""
    users = np.unique(ratings["user_id"].to_numpy())
    if max_users is None or users.size <= max_users:
        return ratings
    if max_users < 1:
        raise UserError(f"max_users must be at least 1 (or null for every user), got {max_users}")
    keep = np.sort(_rng(seed, "users").choice(users, max_users, replace=False))
    return ratings[np.isin(ratings["user_id"].to_numpy(), keep)].reset_index(drop=True)


def build(ratings: pd.DataFrame, movies: dict[int, Movie], out_dir: str | Path, source: str, seed: int,
          history_len: int, train_pairs_per_user: int, eval_pairs_per_user: int, val_fraction: float,
          test_fraction: float, like_threshold: float, dislike_threshold: float, ranking_candidates: int,
          negatives: str, split: str = "users", max_users: int | None = None, start: float | None = None,
          phases: built.Phases | None = None, about: dict | None = None) -> dict:
    """Write out_dir/{train,val,test}.jsonl, the training users' ratings beside them (for the baseline
    rules), the test users' candidate sets (ranking_candidates movies each; 0: none) and summary.json;
    return the summary. The settings' defaults: data.built.DEFAULTS (sources.build applies them).
    `ratings` as a source gives them, or as time_ordered returns them when `about` carries its facts
    (sources.build: the raw ratings are gone before the pairs are built). `phases` times each phase
    (pairs, splits, candidates, baselines) and says when it ends; `about` (the release read, its checksum)
    goes into the summary."""
    start = time.perf_counter() if start is None else start
    phases = phases or built.Phases()
    about = dict(about or {})
    if "rating_users" not in about:  # raw ratings: put them in time order here
        ratings, facts = time_ordered(ratings, movies, max_users, seed)
        about |= facts
    params = {"seed": seed, "history_len": history_len, "train_pairs_per_user": train_pairs_per_user,
              "eval_pairs_per_user": eval_pairs_per_user,
              "val_fraction": val_fraction, "test_fraction": test_fraction,
              "like_threshold": like_threshold, "dislike_threshold": dislike_threshold,
              "negatives": negatives, "split": split, "max_users": max_users}
    with phases("pairs", "user-disjoint splits, targets, histories, negatives"):
        splits, prepared, split_users, tried, personal, period_start = _build(
            ratings, movies, **{k: v for k, v in params.items() if k != "max_users"})
    out = Path(out_dir)
    with phases("splits", "examples made, positions balanced, split files written"):
        per_split = {s: write_split(out / f"{s}.jsonl", pending.examples(random.Random(f"{seed}-{s}")))
                     for s, pending in splits.items()}
        (out / PERSONAL_FILE).unlink(missing_ok=True)  # a rebuild into the folder of another task's build
        if personal:
            files.write_jsonl(out / PERSONAL_FILE, (records.to_record(e) for e in personal))
    ranking = None
    if ranking_candidates:
        with phases("candidates", "the test users' candidate sets"):
            sets, ranking = candidates.build(prepared, movies, split_users["test"], ranking_candidates,
                                             history_len, like_threshold, _rng(seed, "ranking"))
            files.write_jsonl(out / candidates.FILE, sets)
    with phases("baselines", "the training users' ratings for the baseline rules"):
        R.write_train_ratings(out, prepared[prepared["user_id"].isin(split_users["train"])], like_threshold)
    facts = {k: about.pop(k) for k in ("ratings", "rating_users", "source_ratings", "source_users")}
    summary = {"source": str(source), **about, **params, "ratings": facts["ratings"], "movies": len(movies),
               "rating_users": facts["rating_users"],
               # before data.max_users drew its sample: the whole source
               "source_ratings": facts["source_ratings"], "source_users": facts["source_users"],
               "users_without_examples": facts["rating_users"] - sum(s["users"] for s in per_split.values()),
               "task": TASKS[negatives], "candidate_targets": tried,
               # the temporal split's test period starts here (unix time): training pairs lie before it
               "test_period_start": period_start,
               "personal_test": None if not personal else {
                   "file": PERSONAL_FILE, "task": TASKS["matched"], "examples": len(personal),
                   "users": len({e.user_id for e in personal}), "test_users": len(split_users["test"])},
               "splits": per_split, "ranking": ranking, "seconds": round(time.perf_counter() - start, 2),
               "phases": phases.record}
    built.write_summary(out, summary)
    return summary
