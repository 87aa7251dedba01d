"""The statistics of a verdict: one spread rule for a gap, verdicts with magnitude, the smallest
detectable gap, looks for ``--seeds auto``, and outlying seeds.  docs/statistics.md explains the
rule with a worked example; tests/test_stats.py checks its coverage and error rate by simulation.

The evidence of a claim is, for each of its two arms (``a`` and ``b``), a seeds x test-images array
of per-image scores (1 right, 0 wrong; a fraction where a curve is interpolated between two
operating points).  The gap is the mean over seeds of the per-seed gaps.  Every seed is scored on
the same test images, so two sources of noise must be counted: the seeds (which networks training
happened to give) and the test images (which images the test set happened to hold, shared by every
seed).  With d[s, i] = a[s, i] - b[s, i] seen as a crossed two-way layout (seed effect, image
effect, interaction), the variance of the mean gap is

    Var = sigma_seed^2 / S + sigma_image^2 / n + sigma_interaction^2 / (S n)

estimated from the two-way ANOVA mean squares by two parts:

    seed part   c_seed  = s_g^2 / S                          (s_g^2: the sample variance of the
                                                               per-seed gaps; it holds the interaction)
    image part  c_image = max(MS_image - MS_residual, 0) / (S n)   (the test-image part every seed shares)

and the 95 % interval is gap ± sqrt(t^2 c_seed + z^2 c_image), with t the Student quantile at S - 1
degrees of freedom (the seed part is known from S seeds only) and z the normal one (the image part
is known from thousands of images): each part's own interval half-width, added in quadrature.  A plain
t-interval over seeds misses the image part; adding a paired bootstrap over images to it counts the
interaction twice; one Satterthwaite t over the sum undercovers at 3 seeds (92 % in the simulation),
because its degrees of freedom grow exactly when the seed part is underestimated.
"""
from __future__ import annotations

import functools
import io
import math
import zipfile
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

LEVEL = 0.95          # the confidence level of a verdict's interval at a fixed number of seeds
POWER = 0.80          # the power at which the smallest detectable gap is stated
MIN_SEEDS = 3         # fewer seeds give no verdict: the seed-to-seed spread is not known well enough
LOOKS = (3, 5, 7, 10)  # --seeds auto looks at these seed counts (capped by --max-seeds)
MAX_SEEDS_PROJECTED = 100  # the seeds-needed projection stops here

REPRODUCED, CONTRADICTED, SMALLER, INCONCLUSIVE = "reproduced", "contradicted", "smaller than claimed", "inconclusive"
SETTLED = (REPRODUCED, CONTRADICTED, SMALLER)


# --------------------------------------------------------------------------- quantiles


@functools.lru_cache(maxsize=4096)
def _norm_ppf(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, refined by one Newton step:
    error below 1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"a probability in (0, 1), got {p}")
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - lo:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def _t_cdf(x: float, df: float) -> float:
    """Student's t distribution function, through the regularised incomplete beta function."""
    if math.isinf(df):
        return 0.5 * math.erfc(-x / math.sqrt(2))
    z = df / (df + x * x)
    tail = 0.5 * _betainc(df / 2, 0.5, z)
    return 1 - tail if x > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1 / d
        c = 1 + num / c
        c = tiny if abs(c) < tiny else c
        cd = c * d
        f *= cd
        if abs(1 - cd) < 1e-14:
            break
    return math.exp(lbeta) * (f - 1) / a


@functools.lru_cache(maxsize=4096)
def t_ppf(p: float, df: float) -> float:
    """Student's t quantile for any df > 0 (math.inf: the normal); bisection on :func:`_t_cdf`."""
    if math.isinf(df) or df > 1e7:
        return _norm_ppf(p)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1 - p, df)
    lo, hi = 0.0, max(10.0, 2 * _norm_ppf(p))
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# --------------------------------------------------------------------------- a gap and its spread


@dataclass(frozen=True)
class Gap:
    """The evidence of a gap (points) and its spread.

    ``kind``: "images" (per-image scores of both arms over seeds: the rule above), "seeds" (one value
    per seed, no per-image data: a t-interval over seeds, which says so), "fixed" (a deterministic
    quantity, e.g. a FLOPs count: no spread).  ``var_seed`` is s_g^2 (the variance of one seed's gap;
    NaN at one seed), ``var_image`` the shared test-image part of the mean's variance.  ``a``/``b``
    keep the evidence (seeds x images) for the claims' evidence files; ``arms`` name the runs behind
    them, so that an outlying seed of one of them can be shown (:func:`without_seeds`)."""
    gap: float
    seeds: int
    per_seed: tuple[float, ...] = ()
    kind: str = "images"
    images: int = 0
    var_seed: float = math.nan
    var_image: float = 0.0
    arms: tuple[str, str] | None = None
    a: np.ndarray | None = field(default=None, repr=False, compare=False)
    b: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def var(self) -> float:
        """The estimated variance of the gap (points^2): c_seed + c_image; NaN at one seed."""
        if self.kind == "fixed":
            return 0.0
        return self.var_seed / max(self.seeds, 1) + self.var_image

    @property
    def se(self) -> float:
        return math.sqrt(self.var)

    def _width(self, q_seed: float, q_image: float) -> float:
        c_seed = self.var_seed / max(self.seeds, 1)
        if self.seeds < 2 or math.isnan(c_seed):  # one seed: the test images only
            return q_image * math.sqrt(self.var_image) if self.kind == "images" and self.images > 1 else math.nan
        return math.sqrt(q_seed ** 2 * c_seed + q_image ** 2 * self.var_image)

    def halfwidth(self, level: float = LEVEL) -> float:
        """sqrt(t^2 c_seed + z^2 c_image) at ``level`` (module docstring); at one seed z x the image part."""
        if self.kind == "fixed":
            return 0.0
        p = 1 - (1 - level) / 2
        return self._width(t_ppf(p, self.seeds - 1) if self.seeds > 1 else math.nan, _norm_ppf(p))

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        h = self.halfwidth(level)
        return self.gap - h, self.gap + h

    def detectable(self, level: float = LEVEL, power: float = POWER, seeds: int | None = None) -> float:
        """The smallest true gap a two-sided test at ``level`` detects with ``power`` at ``seeds``
        seeds (default: these): each part's quantiles summed, (t_{1-a/2} + t_power) and (z_{1-a/2} +
        z_power), the parts added in quadrature as in :meth:`halfwidth`."""
        if self.kind == "fixed" or self.seeds < 2 or math.isnan(self.var_seed):
            return math.nan
        s = seeds or self.seeds
        p = 1 - (1 - level) / 2
        g = replace(self, seeds=s)
        return g._width(t_ppf(p, s - 1) + t_ppf(power, s - 1), _norm_ppf(p) + _norm_ppf(power))

    # the old API's (value, spread) pair, for tables that show "mean ± half-width"
    def __iter__(self):
        return iter((self.gap, self.halfwidth()))


def gap_evidence(a: Sequence, b: Sequence, arms: tuple[str, str] | None = None) -> Gap:
    """The gap mean(a) - mean(b) in points with its two variance parts (module docstring).
    ``a``, ``b``: per seed, each test image's score (0/1 or fractional), the same images in the same
    order for both arms and every seed; seed s of ``a`` is paired with seed s of ``b``."""
    A, B = _stack(a), _stack(b)
    if A.shape != B.shape:
        raise ValueError(f"a gap needs the same seeds and test images on both sides, got {A.shape} and {B.shape}")
    d = (A - B) * 100.0
    S, n = d.shape
    g = d.mean(1)
    gap = float(g.mean())
    if S == 1:  # the test images only: the seed-to-seed part is unknown
        v = float(d[0].var(ddof=1) / n) if n > 1 else math.nan
        return Gap(gap, 1, (gap,), "images", n, math.nan, v, arms, A, B)
    col = d.mean(0)
    ms_img = S * float(((col - gap) ** 2).sum()) / (n - 1) if n > 1 else 0.0
    resid = d - g[:, None] - col[None, :] + gap
    ms_res = float((resid ** 2).sum()) / ((S - 1) * (n - 1)) if n > 1 else 0.0
    c_img = max((ms_img - ms_res) / (S * n), 0.0)
    return Gap(gap, S, tuple(map(float, g)), "images", n, float(g.var(ddof=1)), c_img, arms, A, B)


def seeds_evidence(values: Sequence[float]) -> Gap:
    """A quantity measured once per seed with no per-image data (a FLOPs saving at a fitted
    threshold, a variance ratio): the mean and its t-interval over seeds; one seed has no spread."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    s2 = float(v.var(ddof=1)) if v.size > 1 else math.nan
    return Gap(float(v.mean()), int(v.size), tuple(map(float, v)), "seeds", 0, s2, 0.0)


def one_seed(value: float, halfwidth: float, images: int = 0) -> Gap:
    """One seed's value with a 95 % half-width over test images computed elsewhere (a bootstrap):
    shown, never judged (the seed-to-seed spread is unknown)."""
    return Gap(float(value), 1, (float(value),), "images", images or 2, math.nan, (halfwidth / _norm_ppf(0.975)) ** 2)


def fixed(value: float) -> Gap:
    """A deterministic quantity (a FLOPs or parameter count): no spread, no seeds."""
    return Gap(float(value), 0, (), "fixed")


def _stack(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).reshape(x.shape[0], -1) if x.ndim > 1 else x.astype(np.float64)[None]
    rows = [np.asarray(r.double().numpy() if hasattr(r, "double") else r, dtype=np.float64).ravel() for r in x]
    if not rows:
        raise ValueError("a gap needs at least one seed")
    if len({r.size for r in rows}) != 1:
        raise ValueError("every seed must be scored on the same test images")
    return np.stack(rows)


def without_seeds(g: Gap, drop: Sequence[int]) -> Gap | None:
    """The same gap without the seeds ``drop`` (an outlying seed of either arm: its pair goes too);
    None when it has no per-image evidence or too few seeds would remain."""
    keep = [s for s in range(g.seeds) if s not in set(drop)]
    if len(keep) == g.seeds or not keep:
        return None
    if g.kind == "images" and g.a is not None:
        return gap_evidence(g.a[keep], g.b[keep], g.arms)
    if g.kind == "seeds":
        return replace(seeds_evidence([g.per_seed[s] for s in keep]), arms=g.arms)
    return None


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    word: str                     # reproduced / contradicted / smaller than claimed / inconclusive / "" (none)
    lo: float
    hi: float
    level: float
    detail: str = ""              # magnitude against the paper, or the detectable gap and seeds needed
    detectable: float = math.nan  # the smallest gap this design detects with POWER
    seeds_needed: int | None = None

    @property
    def settled(self) -> bool:
        return self.word in SETTLED


def seeds_needed(g: Gap, target: float, level: float = LEVEL, power: float = POWER) -> int | None:
    """Roughly how many seeds make ``target`` detectable with ``power`` (:meth:`Gap.detectable` at S'
    seeds: the seed part shrinks as 1/S', the shared test-image part does not); None when not even
    MAX_SEEDS_PROJECTED would (the test set's own spread, or too large a seed spread)."""
    if g.kind not in ("images", "seeds") or math.isnan(g.var_seed) or target == 0:
        return None
    for s in range(max(g.seeds, MIN_SEEDS), MAX_SEEDS_PROJECTED + 1):
        if g.detectable(level, power, seeds=s) <= abs(target):
            return s
    return None


def verdict(g: Gap, paper: float | None = None, sign: int | None = None, level: float = LEVEL) -> Verdict:
    """The verdict on a claimed gap with paper value ``paper`` (or only a direction ``sign``):

    - reproduced: the interval excludes 0 on the paper's side (and, with a paper value, says
      whether the gap is smaller than, consistent with, or larger than it);
    - contradicted: it excludes 0 on the other side;
    - smaller than claimed: it holds 0 but excludes the paper's value;
    - inconclusive: it holds both (then: the smallest detectable gap, and the seeds the paper's gap
      would need).
    No verdict ("") below MIN_SEEDS seeds, or without a spread.  Without a paper value or direction,
    "reproduced"/"contradicted" become "differs"/"inconclusive" (no side to take)."""
    has_p = paper is not None and not (isinstance(paper, float) and math.isnan(paper))
    want = (1 if paper > 0 else -1) if has_p and paper != 0 else sign
    lo, hi = g.interval(level)
    if g.kind == "fixed":
        if want is None:
            return Verdict("", lo, hi, level, "a fixed quantity")
        return Verdict(REPRODUCED if (g.gap > 0) == (want > 0) and g.gap != 0 else CONTRADICTED, lo, hi, level,
                       "a fixed quantity (a count, not a measurement)")
    det = g.detectable(level)
    if g.seeds < MIN_SEEDS or math.isnan(g.var):
        return Verdict("", lo, hi, level, "", det)
    if want is None:
        if lo > 0 or hi < 0:
            return Verdict("differs", lo, hi, level, "", det)
        return Verdict(INCONCLUSIVE, lo, hi, level, f"detectable gap {det:.2f} at {POWER:.0%} power", det)
    side_lo, side_hi = (lo, hi) if want > 0 else (-hi, -lo)  # the interval on the claim's side
    p = abs(paper) if has_p else None
    if side_lo > 0:
        if p is None:
            return Verdict(REPRODUCED, lo, hi, level, "", det)
        rel = ("smaller than the paper's" if side_hi < p else "larger than the paper's" if side_lo > p
               else "consistent with the paper's")
        return Verdict(REPRODUCED, lo, hi, level, rel, det)
    if side_hi < 0:
        return Verdict(CONTRADICTED, lo, hi, level, "", det)
    if p is not None and side_hi < p:
        return Verdict(SMALLER, lo, hi, level, "the interval holds 0 and excludes the paper's gap", det)
    n = seeds_needed(g, p if p is not None else det, level)
    need = ("" if p is None else
            f"; the paper's {p:.2f} needs about {n} seeds" if n is not None and n > g.seeds else
            f"; the paper's {p:.2f} is out of reach of more seeds on this test set" if n is None else "")
    return Verdict(INCONCLUSIVE, lo, hi, level, f"detectable gap {det:.2f} at {POWER:.0%} power{need}", det, n)


def _digits(values: Sequence[float], anchors: Sequence[float]) -> int:
    """The fewest decimals (2..4) at which no value reads as equal to an anchor it differs from (so
    that "[+0.00, ...]" never stands for an interval that excludes 0)."""
    for d in (2, 3, 4):
        if all(round(v, d) != round(x, d) for v in values for x in anchors if v != x and not math.isnan(v)):
            return d
    return 4


def claim_line(name: str, g: Gap, paper: float | None = None, sign: int | None = None, level: float = LEVEL,
               scale: str = "") -> tuple[str, Verdict]:
    """A claim's one line: ours with its interval, the paper's value, the verdict and its detail."""
    v = verdict(g, paper, sign, level)
    has_p = paper is not None and not (isinstance(paper, float) and math.isnan(paper))
    p = f"; paper {paper:+.2f}" if has_p else ""
    if scale == "smoke":
        return f"{name}: ours {g.gap:+.2f}{p} (smoke scale: a pipeline check, no verdict)", v
    if g.kind == "fixed":  # a count (FLOPs, parameters): judged as it is, at any number of seeds
        word = v.word or "no direction claimed"
        return f"{name}: ours {g.gap:+.2f} (a fixed quantity){p} ({word})", v
    if math.isnan(g.halfwidth(level)):
        return f"{name}: ours {g.gap:+.2f}{p} (one seed and no per-image data: no spread, no verdict)", v
    d = _digits([v.lo, v.hi, g.gap], [0.0] + ([abs(paper), -abs(paper)] if has_p else []))
    if g.seeds < MIN_SEEDS:
        what = ("test images only" if g.seeds == 1 else
                f"{g.seeds} seeds" + (" and the test images" if g.kind == "images" else "") + f": a verdict needs {MIN_SEEDS}")
        return f"{name}: ours {g.gap:+.{d}f} ± {g.halfwidth(level):.{d}f} ({what}){p} (no verdict)", v
    ci = f"[{v.lo:+.{d}f}, {v.hi:+.{d}f}]"
    word = v.word if v.word else "no verdict"
    detail = f", {v.detail}" if v.detail else ""
    return f"{name}: ours {g.gap:+.{d}f} {ci}{p} ({word}{detail})", v


# --------------------------------------------------------------------------- --seeds auto


def looks(max_seeds: int = 10) -> tuple[int, ...]:
    """The seed counts --seeds auto looks at: LOOKS below the cap, then the cap."""
    if max_seeds < MIN_SEEDS:
        raise ValueError(f"--max-seeds must be at least {MIN_SEEDS}, got {max_seeds}")
    return tuple(sorted({*(s for s in LOOKS if s < max_seeds), max_seeds}))


def look_level(n_looks: int, level: float = LEVEL) -> float:
    """Bonferroni's split of the error over the looks: each look's interval at 1 - alpha / looks, so
    that over all looks a false reproduced/contradicted happens with probability at most alpha."""
    return 1 - (1 - level) / max(n_looks, 1)


# --------------------------------------------------------------------------- outlying seeds


def outlying(groups: dict, chance: float | None = None, k: float = 4.0, floor: float = 2.0) -> list[tuple]:
    """Outlying seeds among ``groups`` ({run name: its validation top-1 per seed, %}): (name, seed) of
    every value far from its siblings.  Each value is compared with the mean of its run's other
    seeds; the scale of such differences is pooled over every run of the artifact (1.4826 x their
    median absolute value, robust to the outliers themselves), and a run's most extreme value is
    outlying beyond ``k`` times that scale and ``floor`` points (then its next one, without it, while
    3 seeds remain), or any value within 5 points of chance.  Calibrated by
    simulation (tests/test_stats.py): with no outlier, at most about 3 % of artifacts of 1 to 6 runs
    with 3 to 10 seeds (seed spreads of 1 to 3 points) get a false flag; a seed collapsed by 8 points
    is found about half the time with 3 runs of 5 seeds.  A run needs 3 seeds, and the pool 6 values."""
    out = []
    if chance is not None:
        out += [(name, s) for name, vals in groups.items() for s, x in enumerate(vals) if x <= chance + 5]
    def diffs(v: np.ndarray) -> np.ndarray:  # each value minus the mean of the others, scaled to sigma
        return (v - (v.sum() - v) / (v.size - 1)) / math.sqrt(1 + 1 / (v.size - 1))

    runs = {name: np.asarray(list(vals), dtype=float) for name, vals in groups.items() if len(vals) >= 3}
    pooled = np.concatenate([diffs(v) for v in runs.values()]) if runs else np.zeros(0)
    if pooled.size >= 6:
        cut = max(k * 1.4826 * float(np.median(np.abs(pooled))), floor)
        for name, v in runs.items():  # the most extreme seed first, again without it while 3 remain
            keep = list(range(v.size))
            while len(keep) >= 3:
                e = diffs(v[keep])
                worst = int(np.argmax(np.abs(e)))
                if abs(e[worst]) <= cut:
                    break
                out.append((name, keep.pop(worst)))
    return sorted(set(out))


# --------------------------------------------------------------------------- evidence files


def pack(x: np.ndarray) -> dict:
    """A seeds x images score array, compactly: packed bits where every score is 0 or 1 (about
    1.3 kB per 10,000 images), else float32."""
    x = np.asarray(x)
    if np.isin(x, (0.0, 1.0)).all():
        return {"bits": np.packbits(x.astype(bool), axis=-1), "n": np.int64(x.shape[-1])}
    return {"float": x.astype(np.float32)}


def unpack(d: dict) -> np.ndarray:
    if "bits" in d:
        n, width = int(d["n"]), int(d["bits"].shape[-1])
        if not 8 * width - 7 <= n <= 8 * width:
            raise ValueError(f"{n} images do not fit {width} packed bytes")
        return np.unpackbits(d["bits"], axis=-1, count=n).astype(np.float64)
    return np.asarray(d["float"], dtype=np.float64)


def evidence_bytes(claims: Sequence[tuple[str, Gap]]) -> bytes:
    """The per-image evidence of every claim with some, as one compressed .npz: for claim j, arrays
    ``j/a.*`` and ``j/b.*`` (:func:`pack`) and ``j/name``; anyone can redo the statistics from it."""
    arrays = {}
    for j, (name, g) in enumerate(claims):
        if g.a is None:
            continue
        arrays[f"{j}/name"] = np.array(name)
        for side, x in (("a", g.a), ("b", g.b)):
            for k, v in pack(x).items():
                arrays[f"{j}/{side}.{k}"] = v
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # np.load reads it; fixed dates: same bytes
        for key, value in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, np.asarray(value), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), one.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def read_evidence(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{claim name: (a, b)} from an evidence file (:func:`evidence_bytes`)."""
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        out = {}
        for j in sorted({k.split("/")[0] for k in keys}, key=int):
            parts = {k.split("/", 1)[1]: z[k] for k in keys if k.split("/")[0] == j}
            sides = []
            for side in ("a", "b"):
                sides.append(unpack({k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith(side + ".")}))
            out[str(parts["name"])] = (sides[0], sides[1])
    return out


