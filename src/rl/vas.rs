//! Variance-Aware Sampling (VAS), MMR1 paper (arXiv 2509.21268), Sec. 3 "Variance-Aware
//! Sampling" and Algorithm 1.
//!
//! ```text
//! P(x)   = mean_i V(x, y_i)                   pass rate over N rollouts, V in {0, 1}
//! OVS(x) = P(x) (1 - P(x))                    outcome variance score (Bernoulli variance)
//! TDS(x) = diversity of the N rollouts        trajectory diversity score, in [0, 1]
//! VPS(x) = alpha OVS(x) + beta TDS(x)         variance promotion score (alpha 0.8, beta 0.2)
//! batch  = ceil(lambda B) prompts drawn proportional to VPS + the rest uniformly (lambda 0.5)
//! ```
//!
//! The paper defines TDS as "inverse self-BLEU or distinct-n"; we implement both on token ids
//! ([`TdsMetric`]), default `1 - self-BLEU-4`. Differences from the reference code (see
//! `shared/MMR1.md`, `docs/algorithm.md`): its TDS is raw self-BLEU (a similarity, so it
//! rewards *less* diverse prompts) computed over right-padded ids (pads swamp it); its sampler
//! takes floor(lambda B) weighted draws *with* replacement after min-max normalising VPS (the
//! lowest-VPS prompt gets weight 0). We use exact-length token slices, 1 - self-BLEU, ceil and
//! without replacement by default; [`VasSampler::reference_compat`] restores the reference
//! sampler's floor / with-replacement / min-max behaviour.

use std::collections::{HashMap, HashSet};

use rand::distributions::{Distribution, WeightedIndex};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Mean correctness of an item's rollouts (0 for no rollouts). With binary correctness this is
/// the paper's P(x).
pub fn pass_rate(correctness: &[f32]) -> f32 {
    if correctness.is_empty() {
        return 0.0;
    }
    (correctness.iter().map(|&c| c as f64).sum::<f64>() / correctness.len() as f64) as f32
}

/// Outcome variance score `p (1 - p)`, p clamped to [0, 1]: 0.25 at p = 0.5, 0 at 0 and 1.
pub fn ovs(p: f32) -> f32 {
    let p = p.clamp(0.0, 1.0);
    p * (1.0 - p)
}

/// The paper's weight of OVS in VPS (MMR1 Sec. 3; the one home of this default).
pub const PAPER_ALPHA: f32 = 0.8;
/// The paper's weight of TDS in VPS.
pub const PAPER_BETA: f32 = 0.2;

/// Variance promotion score `alpha * ovs + beta * tds` (paper: alpha 0.8, beta 0.2).
pub fn vps(ovs: f32, tds: f32, alpha: f32, beta: f32) -> f32 {
    alpha * ovs + beta * tds
}

/// Which diversity measure TDS uses. Both are 0 for identical rollouts, 1 for rollouts that
/// share no token, in [0, 1], and O(total tokens) with hash maps of n-gram counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TdsMetric {
    /// `1 - self-BLEU`: each rollout is scored by sentence BLEU-`max_n` against all the others
    /// as references (clipped n-gram counts against the per-n-gram max over references,
    /// geometric mean of precisions with uniform weights, brevity penalty with the closest
    /// reference length, shorter on ties), exactly as nltk 3.9.1 `sentence_bleu` with
    /// `SmoothingFunction().method2` computes it (add-one on numerator and denominator for
    /// n >= 2, Lin & Och 2004; n-gram denominators at least 1; no unigram match or an empty
    /// rollout gives 0), so values agree with the diversity literature's self-BLEU (which
    /// scores each text against all the others with nltk; Texygen, Zhu et al. 2018, uses
    /// nltk's method1). Identical rollouts of at least `max_n` tokens score 1, rollouts
    /// without a shared token 0; an order a rollout is too short for counts as precision 1/2
    /// (nltk), so identical short rollouts score below 1. self-BLEU is the mean over rollouts.
    InverseSelfBleu { max_n: usize },
    /// Normalised distinct-n, averaged over orders 1..=max_n:
    /// `(U - max_i D_i) / (sum_i D_i - max_i D_i)` with U the number of distinct n-grams of the
    /// union and D_i those of rollout i. Raw distinct-n (U / total n-grams) is 1/K, not 0, for K
    /// identical rollouts; this rescales it to 0 (all identical) .. 1 (pairwise disjoint).
    /// Orders where fewer than two rollouts have n-grams are skipped.
    DistinctN { max_n: usize },
}

impl Default for TdsMetric {
    fn default() -> Self {
        TdsMetric::InverseSelfBleu { max_n: 4 }
    }
}

/// TDS with the default metric (1 - self-BLEU-4). See [`tds_with`].
pub fn tds(rollouts: &[&[u32]]) -> f32 {
    tds_with(rollouts, TdsMetric::default())
}

/// Trajectory diversity of an item's rollouts (exact-length token-id slices, no padding).
/// Fewer than two rollouts: 0 (no diversity observable).
pub fn tds_with(rollouts: &[&[u32]], metric: TdsMetric) -> f32 {
    if rollouts.len() < 2 {
        return 0.0;
    }
    let v = match metric {
        TdsMetric::InverseSelfBleu { max_n } => 1.0 - self_bleu(rollouts, max_n),
        TdsMetric::DistinctN { max_n } => distinct_n(rollouts, max_n),
    };
    v.clamp(0.0, 1.0) as f32
}

/// n-gram counts of one sequence for one order, keyed by borrowed slices.
fn ngram_counts(seq: &[u32], n: usize) -> HashMap<&[u32], u32> {
    let mut m = HashMap::new();
    if seq.len() >= n {
        for g in seq.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// The two largest per-rollout counts of an n-gram, with the owner of the largest, so the max
/// over "all rollouts but i" is O(1).
#[derive(Clone, Copy)]
struct Top2 {
    c1: u32,
    owner1: usize,
    c2: u32,
}

impl Top2 {
    fn push(&mut self, c: u32, owner: usize) {
        if c > self.c1 {
            self.c2 = self.c1;
            self.c1 = c;
            self.owner1 = owner;
        } else if c > self.c2 {
            self.c2 = c;
        }
    }
    fn max_excluding(&self, i: usize) -> u32 {
        if self.owner1 == i {
            self.c2
        } else {
            self.c1
        }
    }
}

/// Mean sentence BLEU-`max_n` of each rollout against the others (see
/// [`TdsMetric::InverseSelfBleu`]). O(total tokens * max_n) hash operations plus O(K^2) for the
/// brevity penalty's closest-length search (K = number of rollouts).
pub fn self_bleu(rollouts: &[&[u32]], max_n: usize) -> f64 {
    let k = rollouts.len();
    assert!(max_n >= 1, "max_n must be >= 1");
    if k < 2 {
        return 1.0;
    }
    // log-precision sums per rollout
    let mut log_p = vec![0f64; k];
    let mut zero = vec![false; k];
    for n in 1..=max_n {
        let counts: Vec<HashMap<&[u32], u32>> =
            rollouts.iter().map(|r| ngram_counts(r, n)).collect();
        let mut top: HashMap<&[u32], Top2> = HashMap::new();
        for (i, c) in counts.iter().enumerate() {
            for (&g, &cnt) in c {
                top.entry(g).or_insert(Top2 { c1: 0, owner1: usize::MAX, c2: 0 }).push(cnt, i);
            }
        }
        for i in 0..k {
            // nltk `modified_precision`: the denominator is max(1, number of n-grams), so an
            // order the rollout is too short for has precision 0/1 (then 1/2 after smoothing).
            let total = rollouts[i].len().saturating_sub(n - 1).max(1) as f64;
            let matched: u64 =
                counts[i].iter().map(|(g, &c)| c.min(top[g].max_excluding(i)) as u64).sum();
            // nltk `SmoothingFunction().method2`: +1 on numerator and denominator for n >= 2;
            // no unigram match means BLEU 0 (corpus_bleu returns 0 before smoothing).
            let p = if n == 1 {
                matched as f64 / total
            } else {
                (matched as f64 + 1.0) / (total + 1.0)
            };
            if p == 0.0 {
                zero[i] = true;
            } else {
                log_p[i] += p.ln() / max_n as f64;
            }
        }
    }
    let mut sum = 0f64;
    for i in 0..k {
        let c = rollouts[i].len();
        // closest reference length, shorter on ties
        let r = (0..k)
            .filter(|&j| j != i)
            .map(|j| rollouts[j].len())
            .min_by_key(|&l| ((l as i64 - c as i64).abs(), l))
            .unwrap();
        // nltk `brevity_penalty`: 1 if longer than the closest reference, 0 if empty.
        let bp = if c > r {
            1.0
        } else if c == 0 {
            0.0
        } else {
            (1.0 - r as f64 / c as f64).exp()
        };
        let bleu = if zero[i] { 0.0 } else { bp * log_p[i].exp() };
        sum += bleu;
    }
    sum / k as f64
}

/// Normalised distinct-n (see [`TdsMetric::DistinctN`]).
fn distinct_n(rollouts: &[&[u32]], max_n: usize) -> f64 {
    assert!(max_n >= 1, "max_n must be >= 1");
    let mut acc = 0f64;
    let mut orders = 0usize;
    for n in 1..=max_n {
        let mut union: HashSet<&[u32]> = HashSet::new();
        let (mut s, mut mx, mut nonempty) = (0usize, 0usize, 0usize);
        for r in rollouts {
            let d = ngram_counts(r, n);
            s += d.len();
            mx = mx.max(d.len());
            nonempty += (!d.is_empty()) as usize;
            union.extend(d.keys().copied());
        }
        if nonempty < 2 || s == mx {
            continue;
        }
        acc += (union.len() - mx) as f64 / (s - mx) as f64;
        orders += 1;
    }
    if orders == 0 {
        0.0
    } else {
        acc / orders as f64
    }
}

/// Pass rate, OVS, TDS and VPS of one item's rollouts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutScores {
    /// Number of rollouts scored.
    pub n: usize,
    pub pass_rate: f32,
    pub ovs: f32,
    pub tds: f32,
    pub vps: f32,
}

/// Scores one item from its N rollouts: `correctness[i]` of rollout i (binary in the paper)
/// and their exact-length token ids (normally one slice per rollout; `n` counts the
/// correctness values). The one place an item's VAS scores are computed, so the trainer's
/// refresh ([`VpsTable::refresh`]) and the `score` command cannot drift apart.
pub fn score_item(
    correctness: &[f32],
    rollouts_tokens: &[&[u32]],
    alpha: f32,
    beta: f32,
    metric: TdsMetric,
) -> RolloutScores {
    let p = pass_rate(correctness);
    let o = ovs(p);
    let t = tds_with(rollouts_tokens, metric);
    RolloutScores {
        n: correctness.len(),
        pass_rate: p,
        ovs: o,
        tds: t,
        vps: vps(o, t, alpha, beta),
    }
}

/// Score state of one dataset item.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ItemScore {
    /// VPS from the last refresh; `None` = never scored (the table's prior applies).
    pub vps: Option<f32>,
    pub pass_rate: f32,
    pub ovs: f32,
    pub tds: f32,
    /// Number of rollouts the last refresh used.
    pub num_rollouts: u32,
    /// Training step of the last refresh.
    pub last_step: u64,
}

/// Score given to items that were never scored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnscoredPrior {
    /// The largest VPS any item can reach: `alpha * 0.25 + beta * 1` (max OVS, max TDS).
    /// Optimism under uncertainty: an unscored item is at least as likely as any scored one,
    /// so the weighted half explores it soon and its rollouts then score it. The default.
    Optimistic,
    /// Mean VPS of the scored items (the optimistic value while none is scored): neutral.
    MeanScored,
    /// A fixed value.
    Fixed(f32),
}

/// Per-item VPS state; saved in checkpoints (serde) for resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VpsTable {
    pub alpha: f32,
    pub beta: f32,
    pub tds_metric: TdsMetric,
    pub prior: UnscoredPrior,
    items: Vec<ItemScore>,
}

impl VpsTable {
    /// `num_items` unscored items, paper weights alpha 0.8 / beta 0.2, 1 - self-BLEU-4,
    /// optimistic prior.
    pub fn new(num_items: usize) -> Self {
        Self::with_params(
            num_items,
            PAPER_ALPHA,
            PAPER_BETA,
            TdsMetric::default(),
            UnscoredPrior::Optimistic,
        )
    }

    pub fn with_params(
        num_items: usize,
        alpha: f32,
        beta: f32,
        tds_metric: TdsMetric,
        prior: UnscoredPrior,
    ) -> Self {
        Self { alpha, beta, tds_metric, prior, items: vec![ItemScore::default(); num_items] }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn item(&self, i: usize) -> &ItemScore {
        &self.items[i]
    }

    pub fn items(&self) -> &[ItemScore] {
        &self.items
    }

    pub fn num_scored(&self) -> usize {
        self.items.iter().filter(|s| s.vps.is_some()).count()
    }

    /// Score used for unscored items (see [`UnscoredPrior`]).
    pub fn prior_score(&self) -> f32 {
        let optimistic = self.alpha * 0.25 + self.beta * 1.0;
        match self.prior {
            UnscoredPrior::Optimistic => optimistic,
            UnscoredPrior::MeanScored => {
                let (s, n) = self
                    .items
                    .iter()
                    .filter_map(|it| it.vps)
                    .fold((0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
                if n == 0 {
                    optimistic
                } else {
                    (s / n as f64) as f32
                }
            }
            UnscoredPrior::Fixed(v) => v,
        }
    }

    /// Sampling weight of every item: its VPS, or the prior when unscored.
    pub fn weights(&self) -> Vec<f32> {
        let prior = self.prior_score();
        self.items.iter().map(|it| it.vps.unwrap_or(prior)).collect()
    }

    /// Re-score `item` from N fresh rollouts: correctness per rollout (binary in the paper;
    /// partial credit is accepted but then p(1-p) is not the reward variance) and their exact
    /// token ids.
    pub fn refresh(
        &mut self,
        item: usize,
        correctness: &[f32],
        rollouts_tokens: &[&[u32]],
        step: u64,
    ) {
        let s = score_item(correctness, rollouts_tokens, self.alpha, self.beta, self.tds_metric);
        self.items[item] = ItemScore {
            vps: Some(s.vps),
            pass_rate: s.pass_rate,
            ovs: s.ovs,
            tds: s.tds,
            num_rollouts: s.n as u32,
            last_step: step,
        };
    }
}

/// How lambda * B is rounded to the number of weighted draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightedCount {
    /// ceil(lambda B) (this project's specification).
    Ceil,
    /// floor(lambda B) (MMR1 Algorithm 1 and reference code).
    Floor,
}

/// The two halves of a VAS batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchParts {
    /// Items drawn proportionally to their weight, in draw order.
    pub weighted: Vec<usize>,
    /// Items drawn uniformly at random.
    pub uniform: Vec<usize>,
}

/// Variance-aware batch sampler (MMR1 Algorithm 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VasSampler {
    /// Fraction of the batch drawn proportionally to VPS (MMR1.md default 0.5).
    pub lambda: f32,
    pub weighted_count: WeightedCount,
    /// false (default): the whole batch is duplicate-free; the weighted part is successive
    /// sampling without replacement (each draw proportional to the weights of the items not yet
    /// drawn) and the uniform part is uniform over the items not in the weighted part.
    /// true (reference code): i.i.d. draws, duplicates possible in both parts.
    pub with_replacement: bool,
    /// Min-max normalise the weights first, `(w - min) / (max - min + 1e-8)`, as the reference
    /// code does (the minimum item then has weight 0 in the weighted part).
    pub minmax_normalize: bool,
}

impl Default for VasSampler {
    fn default() -> Self {
        Self::new(0.5)
    }
}

impl VasSampler {
    /// ceil(lambda B) weighted draws without replacement, no min-max normalisation.
    pub fn new(lambda: f32) -> Self {
        assert!((0.0..=1.0).contains(&lambda), "lambda must be in [0, 1]");
        Self {
            lambda,
            weighted_count: WeightedCount::Ceil,
            with_replacement: false,
            minmax_normalize: false,
        }
    }

    /// The MMR1 reference code's sampler: floor, with replacement, min-max normalised VPS.
    pub fn reference_compat(lambda: f32) -> Self {
        Self {
            weighted_count: WeightedCount::Floor,
            with_replacement: true,
            minmax_normalize: true,
            ..Self::new(lambda)
        }
    }

    /// Number of weighted draws for a batch of `batch_size`.
    pub fn num_weighted(&self, batch_size: usize) -> usize {
        // f64 and a small tolerance so that e.g. 0.5 * 6 is exactly 3 under ceil.
        let x = self.lambda as f64 * batch_size as f64;
        let n = match self.weighted_count {
            WeightedCount::Ceil => (x - 1e-9).ceil(),
            WeightedCount::Floor => (x + 1e-9).floor(),
        };
        (n.max(0.0) as usize).min(batch_size)
    }

    /// Item indices of one batch: the weighted part (in draw order) followed by the uniform
    /// part. Panics without replacement if `batch_size > table.len()`.
    pub fn sample_batch(
        &self,
        table: &VpsTable,
        batch_size: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<usize> {
        let p = self.sample_batch_parts(table, batch_size, rng);
        let mut out = p.weighted;
        out.extend(p.uniform);
        out
    }

    /// [`VasSampler::sample_batch`] with the two parts kept apart.
    ///
    /// Weights are the table's VPS (prior for unscored items); non-finite or negative weights
    /// count as 0. Zero-weight items are never drawn by the weighted part but remain reachable
    /// through the uniform part. If every weight is 0 the weighted part falls back to uniform
    /// draws. Without replacement, if fewer than `num_weighted` items have positive weight, the
    /// weighted part takes all of them and the uniform part fills the rest. With lambda = 0 the
    /// weighted path is skipped entirely (no weights read, no random numbers drawn for it).
    pub fn sample_batch_parts(
        &self,
        table: &VpsTable,
        batch_size: usize,
        rng: &mut ChaCha8Rng,
    ) -> BatchParts {
        let n = table.len();
        if batch_size == 0 {
            return BatchParts { weighted: vec![], uniform: vec![] };
        }
        assert!(n > 0, "cannot sample from an empty table");
        if !self.with_replacement {
            assert!(batch_size <= n, "batch_size {batch_size} > {n} items without replacement");
        }
        let m = self.num_weighted(batch_size);
        let mut weighted = Vec::with_capacity(m);
        if m > 0 {
            let mut w: Vec<f64> = table
                .weights()
                .iter()
                .map(|&x| if x.is_finite() && x > 0.0 { x as f64 } else { 0.0 })
                .collect();
            if self.minmax_normalize {
                let lo = w.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                for x in w.iter_mut() {
                    *x = (*x - lo) / (hi - lo + 1e-8);
                }
            }
            if w.iter().all(|&x| x == 0.0) {
                w.iter_mut().for_each(|x| *x = 1.0); // all-zero fallback: uniform
            }
            if self.with_replacement {
                let dist = WeightedIndex::new(&w).expect("positive weights");
                weighted.extend((0..m).map(|_| dist.sample(rng)));
            } else {
                weighted = weighted_without_replacement(&w, m, rng);
            }
        }
        let k = batch_size - weighted.len();
        let uniform = if self.with_replacement {
            (0..k).map(|_| rng.gen_range(0..n)).collect()
        } else {
            uniform_excluding(n, k, &weighted, rng)
        };
        BatchParts { weighted, uniform }
    }
}

/// Successive weighted sampling without replacement of up to `m` items with positive weight,
/// by Efraimidis & Spirakis (2006) keys `ln(u) / w` (u uniform in (0, 1]): the items with the
/// m largest keys, in decreasing key order, have the distribution of m successive draws each
/// proportional to the weights of the items not yet drawn. O(N + m log m).
fn weighted_without_replacement(w: &[f64], m: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> = Vec::with_capacity(w.len());
    for (i, &wi) in w.iter().enumerate() {
        if wi > 0.0 {
            let u: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
            keys.push((u.ln() / wi, i));
        }
    }
    let m = m.min(keys.len());
    let desc = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if m < keys.len() && m > 0 {
        keys.select_nth_unstable_by(m - 1, desc);
    }
    keys.truncate(m);
    keys.sort_by(desc);
    keys.into_iter().map(|(_, i)| i).collect()
}

/// `k` distinct items uniformly from `0..n` minus `exclude`.
fn uniform_excluding(n: usize, k: usize, exclude: &[usize], rng: &mut ChaCha8Rng) -> Vec<usize> {
    if k == 0 {
        return vec![];
    }
    let mut taken: HashSet<usize> = exclude.iter().copied().collect();
    assert!(k + taken.len() <= n, "not enough items left for the uniform part");
    if 2 * (k + taken.len()) <= n {
        // Rejection sampling: at most half the items are ever taken, so the expected number of
        // tries per draw is below 2.
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let i = rng.gen_range(0..n);
            if taken.insert(i) {
                out.push(i);
            }
        }
        out
    } else {
        // Partial Fisher-Yates over the complement.
        let mut rest: Vec<usize> = (0..n).filter(|i| !taken.contains(i)).collect();
        for j in 0..k {
            let s = rng.gen_range(j..rest.len());
            rest.swap(j, s);
        }
        rest.truncate(k);
        rest
    }
}

#[cfg(test)]
mod tests;
