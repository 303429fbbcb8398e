"""Statistics of a sweep's results: Student-t intervals over seeds, paired differences between
arms that share seeds, and the metric each kind of dataset is judged by.

`stats(values)`: mean, sample standard deviation and the 95% t interval of the mean.
`paired_difference(arm, reference)`: the per-seed differences of two arms run with the same seeds
(same data order, same initial values of the parameters they share), their mean and 95% interval,
and the equivalence bound: the smallest d with the interval inside [-d, d], i.e. the difference
the study can exclude beyond d (two one-sided tests at 2.5% each); `Difference.p_value` is the
paired t test's, and `holm(p_values)` adjusts a table's p-values for its number of comparisons.
`best_tuned_value`: the tuning stage's choice, on validation.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import scipy.stats


def t_quantile(probability: float, df: int) -> float:
  """The `probability` quantile (> 0.5) of Student's t with `df` >= 1 degrees of freedom, e.g.
  t_quantile(0.975, 2) = 4.303."""
  if not 0.5 < probability < 1 or int(df) != df or df < 1:
    raise ValueError(f't_quantile needs 0.5 < probability < 1 and an integer df >= 1; '
                     f'got {probability}, {df}')
  return float(scipy.stats.t.ppf(probability, df))


@dataclasses.dataclass
class Stats:
  n: int
  mean: float = math.nan
  std: float = math.nan        # sample standard deviation (n - 1)
  ci_low: float = math.nan
  ci_high: float = math.nan

  @property
  def half_width(self) -> float:
    return (self.ci_high - self.ci_low) / 2


def stats(values: Sequence[float], level: float = 0.95) -> Stats:
  """Mean, sample standard deviation and the Student-t confidence interval of the mean."""
  x = np.asarray([v for v in values], dtype=np.float64)
  n = len(x)
  if n == 0:
    return Stats(0)
  mean = float(x.mean())
  if n == 1:
    return Stats(1, mean)
  std = float(x.std(ddof=1))
  half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
  return Stats(n, mean, std, mean - half, mean + half)


# ----------------------------------------------------------------------------------------------
# Metrics


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str
  label: str        # axis label, with the unit
  label_short: str
  higher_is_better: bool
  scale: float = 1.0
  digits: int = 3
  bounds: tuple = (None, None)  # the range of possible values (scaled); plots are cut to it

  def value(self, values: dict) -> float:
    v = values.get(self.key) if isinstance(values, dict) else None
    try:
      return float(v) * self.scale
    except (TypeError, ValueError):
      return math.nan

  def format(self, raw: float) -> str:
    return f'{float(raw) * self.scale:.{self.digits}f}'


METRICS = (  # in order of preference: a language model's records also hold token accuracy
    Metric('bpc', 'bits per character', 'bpc', False, bounds=(0.0, None)),
    Metric('perplexity', 'perplexity', 'ppl', False, digits=1, bounds=(1.0, None)),
    Metric('label_error_rate', 'label error rate (%)', 'LER %', False, 100.0, 2, (0.0, None)),
    Metric('accuracy', 'accuracy (%)', 'acc %', True, 100.0, 2, (0.0, 100.0)),
    Metric('loss', 'loss', 'loss', False, digits=4),
)


def best_tuned_value(candidates: Sequence[tuple[Any, dict]]) -> Any:
  """The tuned value whose runs reach the best mean final validation metric, from (value,
  results.json) pairs (several per value with several tuning seeds). A value with a diverged run
  or a non-finite metric is not chosen; None when no value qualifies."""
  by_value: dict[str, list] = {}
  for value, results in candidates:
    by_value.setdefault(json.dumps(value), [value]).append(results)
  metric = next((pick_metric(r['valid']) for _, r in candidates
                 if isinstance(r.get('valid'), dict)), None)
  best, best_score = None, math.inf
  for value, *runs in by_value.values():
    scores = [metric.value(r.get('valid')) if r.get('status') == 'completed' and metric
              else math.nan for r in runs]
    if not all(math.isfinite(x) for x in scores):
      continue
    score = float(np.mean(scores)) * (-1 if metric.higher_is_better else 1)
    if score < best_score:
      best, best_score = value, score
  return best


def pick_metric(values: dict) -> Optional[Metric]:
  """The metric a record or results split is judged by."""
  for metric in METRICS:
    if metric.key in values:
      return metric
  return None




@dataclasses.dataclass
class Difference:
  """Arm minus reference over the seeds both ran."""
  pairs: int                 # seeds with a finite result in both arms
  excluded: int              # seeds where one arm or both diverged or did not finish
  diffs: list                # per-seed differences (arm - reference), in seed order
  stats: Stats               # of `diffs`
  equivalence_bound: float   # max(|ci_low|, |ci_high|): |difference| < this with 95% confidence

  @property
  def p_value(self) -> float:
    """Two-sided p of the paired t test (mean difference 0); NaN under 2 pairs."""
    s = self.stats
    if s.n < 2:
      return math.nan
    if s.std == 0:
      return 1.0 if s.mean == 0 else 0.0
    t = s.mean / (s.std / math.sqrt(s.n))
    return float(2 * scipy.stats.t.sf(abs(t), s.n - 1))

  @property
  def wilcoxon_p(self) -> float:
    """Two-sided p of the Wilcoxon signed-rank test (scipy.stats.wilcoxon; zero differences
    dropped); NaN under 2 pairs, 1 when every difference is 0. With 5 pairs it cannot go below
    0.0625."""
    return wilcoxon_p(self.diffs)

  @property
  def median(self) -> float:
    return float(np.median(self.diffs)) if self.diffs else math.nan

  @property
  def median_ci(self) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the median difference (BOOTSTRAP_RESAMPLES
    resamples, seed BOOTSTRAP_SEED: the same differences give the same interval)."""
    return bootstrap_median_ci(self.diffs)

  def better_in(self, higher_is_better: bool) -> int:
    """The pairs in which the arm did better than the reference (ties count for neither)."""
    return sum((d > 0) if higher_is_better else (d < 0) for d in self.diffs)

  def verdict(self, higher_is_better: bool, adjusted_p: float = math.nan) -> str:
    """From the 95% interval; with `adjusted_p` (Holm), a difference the interval shows but the
    family of comparisons does not (adjusted p >= 0.05) says so."""
    s = self.stats
    if self.pairs < 2:
      return 'too few pairs'
    if s.ci_low > 0 or s.ci_high < 0:
      better = (s.mean > 0) == higher_is_better
      verdict = 'better' if better else 'worse'
      if adjusted_p >= 0.05:
        verdict += ' (not after Holm)'
      return verdict
    return 'no difference detected'


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the given order (NaN stays NaN and is not counted):
  the i-th smallest of m is multiplied by m - i, then made non-decreasing, capped at 1."""
  finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
  out = [math.nan] * len(p_values)
  running, m = 0.0, len(finite)
  for rank, (p, i) in enumerate(finite):
    running = max(running, min(1.0, (m - rank) * p))
    out[i] = running
  return out


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
  """Benjamini-Hochberg adjusted p-values (the false discovery rate), in the given order (NaN
  stays NaN and is not counted): the i-th smallest of m is multiplied by m / i, then made
  non-increasing from the largest down, capped at 1."""
  finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
  out = [math.nan] * len(p_values)
  running, m = 1.0, len(finite)
  for rank in range(m - 1, -1, -1):
    p, i = finite[rank]
    running = min(running, m * p / (rank + 1))
    out[i] = running
  return out


ADJUSTMENTS = {'Holm': holm, 'BH': benjamini_hochberg}


def wilcoxon_p(diffs: Sequence[float]) -> float:
  """Two-sided p of the Wilcoxon signed-rank test that the paired differences `diffs` are
  centred on 0 (scipy.stats.wilcoxon: exact for small samples without ties, zeros dropped); NaN
  under 2 differences, 1 when none differs from 0."""
  x = np.asarray(diffs, dtype=np.float64)
  if len(x) < 2:
    return math.nan
  if not np.any(x != 0):
    return 1.0
  return float(scipy.stats.wilcoxon(x).pvalue)


BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def bootstrap_median_ci(diffs: Sequence[float], level: float = 0.95,
                        resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
  """(low, high): the percentile bootstrap interval of the median of `diffs`
  (scipy.stats.bootstrap, `resamples` resamples drawn with numpy's generator seeded by `seed`);
  (NaN, NaN) under 2 values. With few pairs it spans most of the differences: a robust
  companion to the t interval, not a sharper one."""
  x = np.asarray(diffs, dtype=np.float64)
  if len(x) < 2:
    return math.nan, math.nan
  if np.all(x == x[0]):
    return float(x[0]), float(x[0])
  result = scipy.stats.bootstrap((x,), np.median, n_resamples=resamples, confidence_level=level,
                                 method='percentile', rng=np.random.default_rng(seed))
  ci = result.confidence_interval
  return float(ci.low), float(ci.high)


def unanimous_sign_test_p(pairs: int) -> float:
  """The two-sided sign test's p when the arm won all `pairs` pairs: the smallest p a "better in"
  count can reach with that many pairs."""
  return float(scipy.stats.binomtest(pairs, pairs, 0.5).pvalue) if pairs else 1.0


def paired_difference(arm: Mapping[Any, float], reference: Mapping[Any, float]) -> Difference:
  """`arm` and `reference` map seed -> final metric (NaN or inf for a diverged run; a seed
  missing when it did not finish). Pairs are the seeds both have with finite values."""
  seeds = sorted(set(arm) | set(reference), key=json.dumps)
  pairs = [s for s in seeds if s in arm and s in reference
           and math.isfinite(arm[s]) and math.isfinite(reference[s])]
  diffs = [float(arm[s] - reference[s]) for s in pairs]
  st = stats(diffs)
  bound = max(abs(st.ci_low), abs(st.ci_high)) if st.n > 1 else math.nan
  return Difference(len(pairs), len(seeds) - len(pairs), diffs, st, bound)
