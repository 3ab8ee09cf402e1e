"""Loaders for the real datasets in ../shared/data, in the shape `shark_export.example_models.split_batches`
consumes: `columns[name]` int64 [n] for single-hot fields, a list of int64 arrays (one per sample) for
multi-hot fields, `columns["dense"]` float32 [n, k] for dense features; labels float32 [n] in {0, 1};
field specs (`FieldSpec(name, cardinality, multi_hot)`).

Ids. Every field is remapped to dense ids with a vocabulary built on the **train split only**: row 0 is
the out-of-vocabulary row (ids unseen in train, or seen fewer than `min_count` times), rows 1..n are the
train values in sorted order. So `cardinality = n + 1` and test ids never exceed the table.

Splits (all deterministic):
- movielens-1m-partial: `split="user-time"` (default) — for every user, its ratings sorted by
  (timestamp, movie id); the last `test_fraction` (default 0.2, at least one rating) of each user's
  ratings are held out. `split="random"`: a seeded random permutation of all ratings.
  Label = rating ≥ 4. Fields: user_id, movie_id, gender, age, occupation, zip, genres (multi-hot),
  hour, weekday (hour and weekday from the UTC timestamp).
- frappe: the NFM `validation` file (57,722 rows) is the train split, the `test` file (28,860 rows) the
  held-out split (the NFM train file is not in the snapshot). Label = 1 for a logged use, 0 for a sampled
  negative. 10 fields; the libFM global offsets are removed before the vocabulary.
- criteo-tiny: `criteo_train_8000` train, `criteo_test_2000` held out. 26 categorical fields (the empty
  value is a category of its own) and 13 dense features as `log(1 + max(x, 0))` (missing → 0).
- avazu-tiny: `avazu_train_8999` train, `avazu_test_1000_noheader` held out. 22 categorical fields:
  C1, banner_pos, site/app/device columns, C14..C21 and hour_of_day (constant in this sample).

`max_train` / `max_test` keep the first rows of each split *before* the vocabulary is built (for smoke
tests). No data is ever copied anywhere: the loaders only read from `data_root`.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from shark_export.example_models import FieldSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = (REPO_ROOT / ".." / "shared" / "data").resolve()

FOLDERS = {
    "movielens": "movielens-1m-partial",
    "frappe": "frappe",
    "criteo": "criteo-tiny",
    "avazu": "avazu-tiny",
}
REQUIRED_FILES = {
    "movielens": ("ratings.dat.gz", "users.dat", "movies.dat"),
    "frappe": ("frappe.validation.libfm.gz", "frappe.test.libfm.gz"),
    "criteo": ("criteo_train_8000.txt.gz", "criteo_test_2000.txt.gz"),
    "avazu": ("avazu_train_8999.csv.gz", "avazu_test_1000_noheader.csv.gz"),
}


class DataNotFound(FileNotFoundError):
    """The dataset folder (or one of its files) is absent; the message says where it was looked for."""


@dataclass
class Dataset:
    name: str
    fields: list[FieldSpec]
    train_columns: dict
    train_labels: np.ndarray
    test_columns: dict
    test_labels: np.ndarray
    split: str
    n_dense: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def train(self) -> tuple[dict, np.ndarray, list[FieldSpec]]:
        return self.train_columns, self.train_labels, self.fields

    @property
    def test(self) -> tuple[dict, np.ndarray, list[FieldSpec]]:
        return self.test_columns, self.test_labels, self.fields

    def describe(self) -> str:
        card = ", ".join(f"{f.name} {f.cardinality}{' (multi-hot)' if f.multi_hot else ''}" for f in self.fields)
        oov = self.notes.get("test_oov_rate", {})
        worst = max(oov.items(), key=lambda kv: kv[1]) if oov else None
        lines = [
            f"{self.name}: train {len(self.train_labels)} rows (positive rate {self.train_labels.mean():.3f}), "
            f"held-out {len(self.test_labels)} rows (positive rate {self.test_labels.mean():.3f}); split: {self.split}",
            f"  fields (rows incl. OOV row 0): {card}" + (f"; dense {self.n_dense}" if self.n_dense else ""),
        ]
        if worst:
            lines.append(f"  held-out OOV rate: highest {worst[0]} {worst[1]:.1%}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def dataset_dir(name: str, data_root: str | Path | None = None) -> Path:
    """The folder of dataset `name` under `data_root` (default ../shared/data of the repo); DataNotFound if absent."""
    root = Path(data_root) if data_root is not None else DEFAULT_DATA_ROOT
    folder = root / FOLDERS[name] if (root / FOLDERS[name]).is_dir() or not _has_files(root, name) else root
    missing = [f for f in REQUIRED_FILES[name] if not (folder / f).is_file()]
    if missing:
        raise DataNotFound(
            f"{FOLDERS[name]} data not found at {folder} (missing {', '.join(missing)}); "
            f"pass --data with the folder that holds {FOLDERS[name]}/ (default {DEFAULT_DATA_ROOT})"
        )
    return folder


def _has_files(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in REQUIRED_FILES[name])


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read().decode(encoding)


def _parse_ints(text: str, per_line: int) -> np.ndarray:
    """int64 [lines, per_line]: the whitespace-separated integers of `text` (numpy's C parser, ~7x faster
    than str.split); raises when a line does not hold exactly `per_line` integers."""
    n_lines = sum(1 for line in text.splitlines() if line.strip())
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size != n_lines * per_line:
        raise ValueError(f"expected {per_line} integers on each of {n_lines} lines, parsed {values.size} values")
    return values.reshape(n_lines, per_line)


def encode(train_values: np.ndarray, test_values: np.ndarray, min_count: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense ids from a train-only vocabulary: 0 = OOV (unseen or rarer than min_count), 1..n = sorted train values."""
    vocab, counts = np.unique(train_values, return_counts=True)
    vocab = vocab[counts >= min_count]

    def lookup(values: np.ndarray) -> np.ndarray:
        if vocab.size == 0:
            return np.zeros(values.shape[0], dtype=np.int64)
        pos = np.searchsorted(vocab, values)
        found = vocab[np.minimum(pos, vocab.size - 1)] == values
        return np.where(found, pos + 1, 0).astype(np.int64)

    return lookup(train_values), lookup(test_values), int(vocab.size) + 1


def encode_bags(train_bags: list[np.ndarray], test_bags: list[np.ndarray], min_count: int = 1):
    """`encode` for multi-hot columns (lists of arrays), keeping the bag boundaries."""
    flat_train = np.concatenate(train_bags) if train_bags else np.zeros(0, np.int64)
    flat_test = np.concatenate(test_bags) if test_bags else np.zeros(0, np.int64)
    ids_train, ids_test, cardinality = encode(flat_train, flat_test, min_count)

    def unflatten(ids, bags):
        bounds = np.cumsum([0] + [len(b) for b in bags]).tolist()
        return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    return unflatten(ids_train, train_bags), unflatten(ids_test, test_bags), cardinality


def _build(
    name: str,
    raw_train: dict,
    y_train: np.ndarray,
    raw_test: dict,
    y_test: np.ndarray,
    order: list[str],
    multi_hot: set[str],
    split: str,
    *,
    min_count: int = 1,
    max_train: int | None = None,
    max_test: int | None = None,
    dense: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Cut to max rows, encode every field with a train vocabulary, and package."""
    n_train = len(y_train) if max_train is None else min(max_train, len(y_train))
    n_test = len(y_test) if max_test is None else min(max_test, len(y_test))
    train_columns: dict = {}
    test_columns: dict = {}
    fields = []
    oov = {}
    for f in order:
        if f in multi_hot:
            tr, te, card = encode_bags(list(raw_train[f][:n_train]), list(raw_test[f][:n_test]), min_count)
            flat = np.concatenate(te) if te else np.zeros(0)
            oov[f] = float((flat == 0).mean()) if flat.size else 0.0
        else:
            tr, te, card = encode(np.asarray(raw_train[f][:n_train]), np.asarray(raw_test[f][:n_test]), min_count)
            oov[f] = float((te == 0).mean()) if te.size else 0.0
        train_columns[f], test_columns[f] = tr, te
        fields.append(FieldSpec(f, card, multi_hot=f in multi_hot))
    n_dense = 0
    if dense is not None:
        train_columns["dense"] = np.ascontiguousarray(dense[0][:n_train], dtype=np.float32)
        test_columns["dense"] = np.ascontiguousarray(dense[1][:n_test], dtype=np.float32)
        n_dense = dense[0].shape[1]
    return Dataset(
        name, fields, train_columns, y_train[:n_train].astype(np.float32), test_columns,
        y_test[:n_test].astype(np.float32), split, n_dense, {"test_oov_rate": oov, "min_count": min_count},
    )


# --------------------------------------------------------------------------------------------------
# MovieLens-1M (partial)
# --------------------------------------------------------------------------------------------------

ML_FIELDS = ["user_id", "movie_id", "gender", "age", "occupation", "zip", "genres", "hour", "weekday"]


def load_movielens(
    data_root=None, *, split: str = "user-time", test_fraction: float = 0.2, seed: int = 0,
    min_count: int = 1, max_train: int | None = None, max_test: int | None = None,
) -> Dataset:
    folder = dataset_dir("movielens", data_root)
    ratings = _parse_ints(_read_text(folder / "ratings.dat.gz").replace("::", " "), 4)
    user, movie, rating, ts = ratings.T

    users = {}
    for line in _read_text(folder / "users.dat", "latin-1").splitlines():
        if line.strip():
            uid, gender, age, occupation, zipcode = line.split("::")
            users[int(uid)] = (gender, int(age), int(occupation), zipcode)
    genre_of = {}
    for line in _read_text(folder / "movies.dat", "latin-1").splitlines():
        if line.strip():
            mid, _title, genres = line.split("::")
            genre_of[int(mid)] = genres.strip().split("|")
    genre_names = sorted({g for gs in genre_of.values() for g in gs})
    genre_code = {g: k for k, g in enumerate(genre_names)}
    movie_genres = np.empty(max(max(genre_of), int(movie.max())) + 1, dtype=object)
    movie_genres[:] = [np.zeros(0, dtype=np.int64)] * movie_genres.shape[0]  # movies without an entry: empty bag
    for m, gs in genre_of.items():
        movie_genres[m] = np.array([genre_code[g] for g in gs], dtype=np.int64)

    # One row per rating: every field as a raw (not yet dense) value.
    unique_users = np.unique(user)
    user_table = {
        "gender": np.array([users[u][0] == "M" for u in unique_users], dtype=np.int64),
        "age": np.array([users[u][1] for u in unique_users], dtype=np.int64),
        "occupation": np.array([users[u][2] for u in unique_users], dtype=np.int64),
        "zip": np.array([users[u][3] for u in unique_users]),
    }
    u_index = np.searchsorted(unique_users, user)
    raw = {
        "user_id": user,
        "movie_id": movie,
        **{k: v[u_index] for k, v in user_table.items()},
        "hour": (ts // 3600) % 24,
        "weekday": ((ts // 86400) + 3) % 7,  # 1970-01-01 was a Thursday: 0 = Monday
    }
    genres = movie_genres[movie]  # object array of per-movie bags (shared arrays)
    labels = (rating >= 4).astype(np.float32)

    if split == "user-time":
        order = np.lexsort((movie, ts, user))  # by user, then time, then movie id (ties)
        sorted_user = user[order]
        starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
        counts = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, counts)
        n_test_per_user = np.maximum(1, np.round(counts * test_fraction).astype(np.int64))
        is_test_sorted = rank >= np.repeat(counts - n_test_per_user, counts)
        train_idx, test_idx = order[~is_test_sorted], order[is_test_sorted]
        desc = f"per user, ratings in time order, last {test_fraction:.0%} of each user held out"
    elif split == "random":
        perm = np.random.default_rng(seed).permutation(len(labels))
        n_test = int(round(len(labels) * test_fraction))
        train_idx, test_idx = np.sort(perm[n_test:]), np.sort(perm[:n_test])
        desc = f"random {1 - test_fraction:.0%}/{test_fraction:.0%} split of all ratings, seed {seed}"
    else:
        raise ValueError(f"unknown MovieLens split {split!r}; use 'user-time' or 'random'")
    # Training order: shuffled (seeded) so that a prefix (max_train) covers many users.
    train_idx = train_idx[np.random.default_rng(seed).permutation(len(train_idx))]

    def take(idx):
        cols = {k: v[idx] for k, v in raw.items()}
        cols["genres"] = genres[idx].tolist()
        return cols

    return _build(
        "movielens-1m-partial", take(train_idx), labels[train_idx], take(test_idx), labels[test_idx],
        ML_FIELDS, {"genres"}, desc, min_count=min_count, max_train=max_train, max_test=max_test,
    )


# --------------------------------------------------------------------------------------------------
# Frappe
# --------------------------------------------------------------------------------------------------

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
FRAPPE_OFFSETS = np.array([0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149], dtype=np.int64)


def _read_libfm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = _parse_ints(_read_text(path).replace(":1", ""), 11)  # every feature is `index:1`
    return (values[:, 0] > 0).astype(np.float32), values[:, 1:] - FRAPPE_OFFSETS


def load_frappe(data_root=None, *, min_count: int = 1, max_train: int | None = None, max_test: int | None = None) -> Dataset:
    folder = dataset_dir("frappe", data_root)
    y_train, x_train = _read_libfm(folder / "frappe.validation.libfm.gz")
    y_test, x_test = _read_libfm(folder / "frappe.test.libfm.gz")
    raw_train = {f: x_train[:, k] for k, f in enumerate(FRAPPE_FIELDS)}
    raw_test = {f: x_test[:, k] for k, f in enumerate(FRAPPE_FIELDS)}
    return _build(
        "frappe", raw_train, y_train, raw_test, y_test, FRAPPE_FIELDS, set(),
        "train = frappe.validation.libfm (file order), held-out = frappe.test.libfm",
        min_count=min_count, max_train=max_train, max_test=max_test,
    )


# --------------------------------------------------------------------------------------------------
# Criteo (tiny)
# --------------------------------------------------------------------------------------------------

CRITEO_FIELDS = [f"C{k}" for k in range(1, 27)]


def _read_criteo(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    rows = [ln.split("\t") for ln in _read_text(path).split("\n") if ln]
    if any(len(r) != 40 for r in rows):
        raise ValueError(f"{path}: expected 40 tab-separated columns per line")
    labels = np.array([int(r[0]) for r in rows], dtype=np.float32)
    ints = np.array([[int(v) if v else 0 for v in r[1:14]] for r in rows], dtype=np.float64)
    dense = np.log1p(np.maximum(ints, 0.0)).astype(np.float32)
    cats = {f: np.array([r[14 + k] for r in rows]) for k, f in enumerate(CRITEO_FIELDS)}
    return labels, dense, cats


def load_criteo(data_root=None, *, min_count: int = 1, max_train: int | None = None, max_test: int | None = None) -> Dataset:
    folder = dataset_dir("criteo", data_root)
    y_train, d_train, c_train = _read_criteo(folder / "criteo_train_8000.txt.gz")
    y_test, d_test, c_test = _read_criteo(folder / "criteo_test_2000.txt.gz")
    return _build(
        "criteo-tiny", c_train, y_train, c_test, y_test, CRITEO_FIELDS, set(),
        "train = criteo_train_8000, held-out = criteo_test_2000",
        min_count=min_count, max_train=max_train, max_test=max_test, dense=(d_train, d_test),
    )


# --------------------------------------------------------------------------------------------------
# Avazu (tiny)
# --------------------------------------------------------------------------------------------------

AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
AVAZU_FIELDS = AVAZU_COLUMNS[3:] + ["hour_of_day"]


def _read_avazu(path: Path, header: bool) -> tuple[np.ndarray, dict]:
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    if header:
        if rows[0] != AVAZU_COLUMNS:
            raise ValueError(f"{path}: unexpected header {rows[0][:5]}…")
        rows = rows[1:]
    rows = [r for r in rows if r]
    if any(len(r) != len(AVAZU_COLUMNS) for r in rows):
        raise ValueError(f"{path}: expected {len(AVAZU_COLUMNS)} comma-separated columns per line")
    table = np.array(rows)
    labels = table[:, 1].astype(np.float32)
    cols = {name: table[:, k] for k, name in enumerate(AVAZU_COLUMNS) if k >= 3}
    cols["hour_of_day"] = np.array([int(h) % 100 for h in table[:, 2]], dtype=np.int64)
    return labels, cols


def load_avazu(data_root=None, *, min_count: int = 1, max_train: int | None = None, max_test: int | None = None) -> Dataset:
    folder = dataset_dir("avazu", data_root)
    y_train, c_train = _read_avazu(folder / "avazu_train_8999.csv.gz", header=True)
    y_test, c_test = _read_avazu(folder / "avazu_test_1000_noheader.csv.gz", header=False)
    return _build(
        "avazu-tiny", c_train, y_train, c_test, y_test, AVAZU_FIELDS, set(),
        "train = avazu_train_8999, held-out = avazu_test_1000_noheader",
        min_count=min_count, max_train=max_train, max_test=max_test,
    )


LOADERS: dict[str, Callable[..., Dataset]] = {
    "movielens": load_movielens,
    "frappe": load_frappe,
    "criteo": load_criteo,
    "avazu": load_avazu,
}


def load(name: str, data_root=None, **kwargs) -> Dataset:
    """Load dataset `name` (movielens, frappe, criteo, avazu) from `data_root` (default ../shared/data)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[name](data_root, **kwargs)
