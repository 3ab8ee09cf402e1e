"""Criteo-like synthetic CTR data: Zipf-distributed ids, a planted signal on some fields, noise on others.

Ids of every field follow a truncated Zipf(exponent) law over the field's cardinality (hot ids permuted so
they are not simply 0, 1, 2, …). The click logit is the sum of per-id effects of the *signal* fields (and of
the bag fields' ids, averaged), a linear term of the dense features, and a bias; labels are Bernoulli draws.
Fields marked noise carry no effect, so field scoring has a ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .example_models import FieldSpec


@dataclass(frozen=True)
class SyntheticField:
    spec: FieldSpec
    signal: float  # std of the per-id effect on the logit; 0 = noise field
    max_bag: int = 1


DEMO_FIELDS = (
    SyntheticField(FieldSpec("user", 60_000), signal=0.8),
    SyntheticField(FieldSpec("item", 30_000), signal=1.0),
    SyntheticField(FieldSpec("site", 5_000), signal=0.5),
    SyntheticField(FieldSpec("device", 800), signal=0.0),
    SyntheticField(FieldSpec("hour", 24), signal=0.3),
    SyntheticField(FieldSpec("noise_id", 20_000), signal=0.0),
    SyntheticField(FieldSpec("tags", 8_000, multi_hot=True), signal=0.6, max_bag=8),
    SyntheticField(FieldSpec("history", 30_000, multi_hot=True), signal=0.4, max_bag=12),
)


def zipf_ids(rng: np.random.Generator, cardinality: int, size: int, exponent: float = 1.1) -> np.ndarray:
    """Truncated Zipf(exponent) draws over [0, cardinality), with ranks mapped to ids by a fixed permutation."""
    ranks = np.arange(1, cardinality + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-exponent)
    cdf /= cdf[-1]
    drawn = np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), cardinality - 1)
    return rng.permutation(cardinality)[drawn].astype(np.int64)


def generate(
    n_samples: int,
    fields: tuple[SyntheticField, ...] = DEMO_FIELDS,
    *,
    n_dense: int = 4,
    seed: int = 0,
    exponent: float = 1.1,
) -> tuple[dict, np.ndarray, list[FieldSpec]]:
    """(columns, labels, field specs) for `example_models.split_batches`."""
    rng = np.random.default_rng(seed)
    effects_rng = np.random.default_rng(seed + 1_000_003)  # same effects for any n_samples
    columns: dict = {}
    logit = np.full(n_samples, -0.3)
    for field in fields:
        effect = effects_rng.normal(0.0, field.signal, field.spec.cardinality) if field.signal else None
        if field.spec.multi_hot:
            lengths = rng.integers(0, field.max_bag + 1, n_samples)
            flat = zipf_ids(rng, field.spec.cardinality, int(lengths.sum()), exponent)
            bags = np.split(flat, np.cumsum(lengths)[:-1])
            columns[field.spec.name] = bags
            if effect is not None:
                sums = np.bincount(np.repeat(np.arange(n_samples), lengths), weights=effect[flat], minlength=n_samples)
                logit += sums / np.sqrt(np.maximum(lengths, 1))
        else:
            ids = zipf_ids(rng, field.spec.cardinality, n_samples, exponent)
            columns[field.spec.name] = ids
            if effect is not None:
                logit += effect[ids]
    if n_dense:
        dense = rng.normal(0.0, 1.0, (n_samples, n_dense)).astype(np.float32)
        logit += dense @ effects_rng.normal(0.0, 0.3, n_dense)
        columns["dense"] = dense
    labels = (rng.random(n_samples) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return columns, labels, [f.spec for f in fields]
