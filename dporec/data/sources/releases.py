"""The MovieLens releases as GroupLens publishes them: one record each, read by the sources' help texts, the
readers (dporec.data.sources.movielens), the synthetic files in each format and the README's table."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """A MovieLens release as GroupLens publishes it: https://files.grouplens.org/datasets/movielens/NAME.zip.

    Counts and sizes are the release's own README's and download's. MD5s are the values GroupLens publishes
    beside each zip (NAME.zip.md5), as quoted by public code that checks them; None where GroupLens
    publishes none that stays valid (`md5_note` says why).
    """
    name: str          # the zip's name without .zip, e.g. "ml-25m"
    title: str         # "MovieLens-25M"
    folder: str        # the folder the zip unpacks into
    layout: str        # "dat": ratings.dat, movies.dat ('::', no header); "csv": ratings.csv, movies.csv
    half_stars: bool   # ratings 0.5-5.0 in half stars (else whole stars 1-5)
    users: int
    ratings: int
    movies: int
    zip_bytes: int | None
    md5: str | None
    md5_note: str = ""

    @property
    def url(self) -> str:
        return f"https://files.grouplens.org/datasets/movielens/{self.name}.zip"

    @property
    def files(self) -> tuple[str, str]:
        return ("ratings.dat", "movies.dat") if self.layout == "dat" else ("ratings.csv", "movies.csv")


RELEASES = (
    Release("ml-1m", "MovieLens-1M (the thesis's)", "ml-1m", "dat", False, 6_040, 1_000_209, 3_883, 5_917_549,
            "c4d9eecfca2ab87c1945afe126590906"),
    Release("ml-10m", "MovieLens-10M", "ml-10M100K", "dat", True, 71_567, 10_000_054, 10_681, 65_566_137,
            "ce571fd55effeba0271552578f2648bd"),
    Release("ml-20m", "MovieLens-20M", "ml-20m", "csv", True, 138_493, 20_000_263, 27_278, 198_702_078,
            "cd245b17a1ae2cc31bb14903e1204af3"),
    Release("ml-25m", "MovieLens-25M", "ml-25m", "csv", True, 162_541, 25_000_095, 62_423, 261_978_986,
            "6b51fb2759a8657d3bfcbfc42b592ada"),
    Release("ml-32m", "MovieLens-32M", "ml-32m", "csv", True, 200_948, 32_000_204, 87_585, 238_950_008,
            "d472be332d4daa821edc399621853b57"),
    Release("ml-latest-small", "MovieLens latest, small", "ml-latest-small", "csv", True, 610, 100_836, 9_742,
            None, None, "a development release GroupLens regenerates in place: no checksum stays valid"),
)


def release(name: str) -> Release:
    """The release called `name` (e.g. "ml-25m")."""
    for r in RELEASES:
        if r.name == name:
            return r
    raise KeyError(name)


def release_names() -> str:
    return ", ".join(r.name for r in RELEASES)
