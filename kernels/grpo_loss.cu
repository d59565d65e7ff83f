// Fused GRPO-family policy loss, two forms over the same per-token formula (`grpo_token`):
//
// - grpo_loss_stream_f32, for the token-level losses (every policy but GSPO and GMPO, with an
//   aggregation whose token weight does not depend on the response's active count, i.e. not
//   seq-mean-token-mean): one streaming pass over the token arrays, flat over the batch, each
//   thread four tokens at a time with 16-byte loads and stores, nothing per response but the
//   advantage. Each block writes one row of partial sums (loss parts, metric numerators).
// - grpo_loss_f32, for the rest: one block per response, which first sums the response
//   (active tokens, GSPO's log-ratio mean, GMPO's geometric mean) and then writes the tokens.
//
// Either way `reduce_rows_f64` then folds the rows, a block per column, in a fixed order. No
// atomics: every sum has an order fixed by the launch shape alone (itself fixed by the token
// and response counts), so the loss, the metrics and every token's gradient are bit-identical
// run after run, and a token's gradient does not depend on which other responses share the
// launch (micro-batching never changes it).
//
// The reference is src/rl/grpo.rs (`policy_loss_f64`; formulas and sources there and in
// grpo/{policy,kl,agg}.rs). This file follows it line by line, in f64: the reference is f64,
// log-ratios beyond +-88 overflow f32's exp, and the tests hold sums to 1e-12 relative. On an
// H100 the f64 work (two f64 exps and ~60 other f64 ops a token with k3 KL) is ~25 us at 4M
// tokens against a memory floor of ~35 us (28 bytes a token), so the two overlap rather than
// add; docs/perf.md has the arithmetic. Inputs and gradients are f32, as the trainer holds them.
//
// The options travel as kernel arguments (GRPO_PRM_ARGS), not as a buffer: a call uploads
// nothing of its own. Options the host leaves unset (a clamp, TRL's delta, the dual clip)
// arrive as +inf, which never passes any comparison they appear in, so "unset" and "+inf" are
// the same formula.
#include "common.cuh"

// PolicyLoss, KlEstimator, Aggregation and Convention codes (same file on the Rust side).
enum { POL_VANILLA, POL_GSPO, POL_GPG, POL_CLIP_COV, POL_KL_COV, POL_GEO_MEAN, POL_CISPO, POL_SAPO };
enum { KL_K1, KL_ABS, KL_K2, KL_K3, KL_K1_PLUS, KL_ABS_PLUS, KL_K3_PLUS };
enum { AGG_TOKEN_MEAN, AGG_TOKEN_SUM, AGG_SEQ_MEAN_TOKEN_SUM, AGG_SEQ_MEAN_TOKEN_MEAN, AGG_SEQ_MEAN_TOKEN_SUM_NORM };
enum { CONV_MMR1, CONV_VERL, CONV_TRL };
// Columns of a response's partial-sum row.
enum GrpoStat {
    GS_PG_LOSS, GS_KL_LOSS, GS_ENT_LOSS, GS_ACTIVE, GS_LOW, GS_HIGH, GS_CLIP, GS_DUAL, GS_AKL,
    GS_KL, GS_RATIO, GS_ENT, GS_COUNT
};
#define GRPO_THREADS 256

struct GrpoPrm {
    int policy, kl_est, conv, agg, pg_agg;
    bool has_kl, kl_ratio_w;
    double eps_low, eps_high, dual_c, trl_delta, beta, ent_coef, lr_clamp, k3_inner, k3_value,
        gspo_cap, tau_pos, tau_neg, ppo_kl_coef, n_tokens, n_seqs, n_rows, l_max;
};

// The options as kernel parameters, in the order src/backend/cuda/rl/grpo_loss.rs `prm_args`
// passes them. `modes` packs the codes: policy (bits 0-3), KL estimator (4-7), convention
// (8-9), aggregation (10-12), policy-gradient aggregation (13-15), has KL (16), ratio-weighted
// KL (17).
#define GRPO_PRM_ARGS                                                                                     \
    int modes, double eps_low, double eps_high, double dual_c, double trl_delta, double beta,             \
        double ent_coef, double lr_clamp, double k3_inner, double k3_value, double gspo_cap,              \
        double tau_pos, double tau_neg, double ppo_kl_coef, double n_tokens, double n_seqs, double n_rows, \
        double l_max
#define GRPO_PRM_MAKE                                                                                     \
    {(modes) & 15, (modes >> 4) & 15, (modes >> 8) & 3, (modes >> 10) & 7, (modes >> 13) & 7,            \
     ((modes >> 16) & 1) != 0, ((modes >> 17) & 1) != 0, eps_low, eps_high, dual_c, trl_delta, beta,   \
     ent_coef, lr_clamp, k3_inner, k3_value, gspo_cap, tau_pos, tau_neg, ppo_kl_coef, n_tokens, n_seqs, \
     n_rows, l_max}

// Rust's f64::clamp: NaN stays NaN.
__device__ __forceinline__ double clampd(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}
// +inf without <math.h> (NVRTC has no INFINITY macro).
__device__ __forceinline__ double inf_d() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ double signd(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0); }

// clamp(x, -c, c) and its derivative (grpo.rs clamp_sym).
__device__ __forceinline__ double clamp_sym(double x, double c, double* dx) {
    if (x > c) { *dx = 0.0; return c; }
    if (x < -c) { *dx = 0.0; return -c; }
    *dx = 1.0;
    return x;
}

// agg.rs token_weight.
__device__ double token_weight(int agg, double n_i, const GrpoPrm& p) {
    const double s = p.conv == CONV_TRL ? p.n_rows : p.n_seqs;
    double d;
    switch (agg) {
    case AGG_TOKEN_MEAN:
        d = p.conv == CONV_VERL ? p.n_tokens : (p.conv == CONV_TRL ? fmax(p.n_tokens, 1.0) : p.n_tokens + 1e-8);
        break;
    case AGG_TOKEN_SUM: d = 1.0; break;
    case AGG_SEQ_MEAN_TOKEN_SUM: d = s; break;
    case AGG_SEQ_MEAN_TOKEN_MEAN: d = (p.conv == CONV_TRL ? fmax(n_i, 1.0) : n_i + 1e-8) * s; break;
    default: d = p.l_max * s; break;
    }
    return d > 0.0 ? 1.0 / d : 0.0;
}

// kl.rs kl_term: (value, d value / d logp).
__device__ double kl_term(int est, double lp, double reflp, const GrpoPrm& p, double* dk) {
    const double d = lp - reflp;
    double v, g;
    switch (est) {
    case KL_K1: case KL_K1_PLUS: v = d; g = 1.0; break;
    case KL_ABS: case KL_ABS_PLUS: v = fabs(d); g = signd(d); break;
    case KL_K2: v = 0.5 * d * d; g = d; break;
    default: { // k3, k3+
        const double x0 = -d;
        double x = x0, dx = -1.0;
        if (x0 > p.k3_inner) { x = p.k3_inner; dx = 0.0; }
        else if (x0 < -p.k3_inner) { x = -p.k3_inner; dx = 0.0; }
        const double ex = exp(x);
        v = ex - x - 1.0;
        g = (ex - 1.0) * dx;
        if (v > p.k3_value) { v = p.k3_value; g = 0.0; }
        else if (v < -p.k3_value) { v = -p.k3_value; g = 0.0; }
    }
    }
    // Straight-through estimators: the value of the base, the gradient of k2.
    if (est == KL_K1_PLUS || est == KL_ABS_PLUS || est == KL_K3_PLUS) g = d;
    *dk = g;
    return v;
}

struct PgTerm {
    double pg, dpg, ratio, akl;
    bool low, high, clipped, dual;
};

// grpo.rs ppo_clip.
__device__ void ppo_clip(double r, double dr, double a, const GrpoPrm& p, PgTerm& t) {
    const double lo = 1.0 - p.eps_low, hi = 1.0 + p.eps_high;
    double r1 = r, dr1 = dr;
    if (r > p.trl_delta) { r1 = p.trl_delta; dr1 = 0.0; }
    const double l1 = -a * r1;
    const double l2 = -a * clampd(r, lo, hi);
    t.low = r1 < lo && a < 0.0;
    t.high = r1 > hi && a > 0.0;
    t.clipped = l2 > l1;
    double lc, dlc;
    if (l2 > l1) { lc = l2; dlc = 0.0; } else { lc = l1; dlc = -a * dr1; }
    t.pg = lc;
    t.dpg = dlc;
    if (a < 0.0 && p.policy == POL_VANILLA) { // dual clip (c = +inf when unset)
        const double l3 = -a * p.dual_c;
        if (lc > l3) { t.dual = true; t.pg = l3; t.dpg = 0.0; }
    }
}

// GMPO's per-token min term (grpo.rs geo_mean_response): returns s * v, writes the derivative.
__device__ double geo_term(double d, double a, const GrpoPrm& p, double* dmin) {
    const double s = signd(a);
    const double dc = clampd(d, -p.eps_low, p.eps_high);
    const double inside = d == dc ? 1.0 : 0.0;
    const double u = s * d, c = s * dc;
    double v, g;
    if (u < c) { v = u; g = 1.0; }
    else if (c < u) { v = c; g = inside; }
    else { v = u; g = 0.5 + 0.5 * inside; }
    *dmin = s * s * g;
    return s * v;
}

// What a response's tokens share: its active count, weights and sequence-level terms.
struct Resp {
    double n_i, w_agg, w_pg, gspo_s, gspo_ds;
    double geo_wr, geo_adv, geo_ratio, geo_den; // GMPO
};

struct TokIn {
    const float *logp, *logp_old, *ref_logp, *entropy, *adv, *mask, *pg_mask;
    const unsigned char* selected;
    int adv_per_token;
};

// One token's inputs, as the formula reads them. Unused inputs (no KL, no entropy, no policy
// mask, no selection) hold neutral values and are never read by the formula.
struct GrpoTok {
    double mt, lp, old, ref, h, adv, pm;
    bool sel;
};

// Token t of response r, read scalar (the per-response kernel).
__device__ __forceinline__ GrpoTok grpo_load_tok(const TokIn& in, long long t, long long r) {
    GrpoTok v;
    v.mt = in.mask[t];
    v.lp = in.logp[t];
    v.old = in.logp_old[t];
    v.ref = in.ref_logp ? (double)in.ref_logp[t] : 0.0;
    v.h = in.entropy ? (double)in.entropy[t] : 0.0;
    v.adv = in.adv[in.adv_per_token ? t : r];
    v.pm = in.pg_mask ? (double)in.pg_mask[t] : 1.0;
    v.sel = in.selected ? in.selected[t] != 0 : false;
    return v;
}

// One token: returns d loss / d logp (before GSPO's spread), adds its contributions to
// st[GS_*] and the spreads, writes d loss / d entropy to *dent (0 without entropy).
__device__ double grpo_token(const GrpoTok& v, bool has_ent, const GrpoPrm& p, const Resp& rs, double* st,
                             double* spread_pg, double* spread_kl, double* dent) {
    const double mt = v.mt, lp = v.lp, old = v.old, adv = v.adv, pm = v.pm;
    const double delta = lp - old;
    PgTerm tt = {0.0, 0.0, 0.0, 0.0, false, false, false, false};
    double dmin = 0.0;
    switch (p.policy) {
    case POL_VANILLA: case POL_CLIP_COV: {
        const double c = p.policy == POL_VANILLA ? p.lr_clamp : inf_d();
        double dd;
        const double d = clamp_sym(delta, c, &dd);
        const double rr = exp(d);
        tt.ratio = rr;
        tt.akl = -d;
        ppo_clip(rr, rr * dd, adv, p, tt);
        if (p.policy == POL_CLIP_COV) {
            if (v.sel) { tt.pg = 0.0; tt.dpg = 0.0; tt.clipped = true; }
            else tt.clipped = false;
        }
        break;
    }
    case POL_GSPO: {
        const double rr = rs.gspo_s;
        tt.ratio = rr;
        tt.akl = -delta;
        ppo_clip(rr, 0.0, adv, p, tt);
        tt.dual = false;
        if (!tt.clipped) {
            const double dcoef = rr > p.trl_delta ? 0.0 : 1.0;
            *spread_pg += rs.w_pg * mt * pm * (-adv) * dcoef;
        }
        break;
    }
    case POL_GPG:
        tt.pg = -lp * adv;
        tt.dpg = -adv;
        tt.ratio = exp(delta);
        tt.akl = -delta;
        break;
    case POL_KL_COV: {
        const double rr = exp(delta);
        tt.ratio = rr;
        tt.akl = fabs(delta);
        tt.pg = -adv * rr;
        tt.dpg = -adv * rr;
        if (v.sel) {
            tt.pg += p.ppo_kl_coef * fabs(delta);
            tt.dpg += p.ppo_kl_coef * signd(delta);
        }
        break;
    }
    case POL_CISPO: {
        double dd;
        const double d = clamp_sym(delta, p.lr_clamp, &dd);
        const double rr = exp(d);
        tt.ratio = rr;
        tt.akl = -d;
        const double lo = p.conv == CONV_TRL ? -inf_d() : 1.0 - p.eps_low;
        const double hi = p.conv == CONV_TRL ? p.eps_high : 1.0 + p.eps_high;
        const double c = clampd(rr, lo, hi);
        tt.clipped = rr != c;
        tt.high = rr > hi && adv > 0.0;
        tt.pg = -c * adv * lp;
        tt.dpg = -c * adv;
        break;
    }
    case POL_SAPO: {
        double dd;
        const double d = clamp_sym(delta, p.lr_clamp, &dd);
        const double rr = exp(d);
        tt.ratio = rr;
        tt.akl = -d;
        const double tau = adv > 0.0 ? p.tau_pos : p.tau_neg;
        const double sg = 1.0 / (1.0 + exp(-(tau * (rr - 1.0))));
        tt.pg = -sg * 4.0 / tau * adv;
        tt.dpg = -adv * 4.0 * sg * (1.0 - sg) * rr * dd;
        break;
    }
    default: { // POL_GEO_MEAN
        tt.ratio = exp(delta);
        tt.akl = -delta;
        const bool clipped = delta != clampd(delta, -p.eps_low, p.eps_high);
        tt.clipped = clipped && adv > 0.0;
        tt.dual = clipped && adv < 0.0;
        geo_term(delta, adv, p, &dmin);
    }
    }
    double g = 0.0;
    if (p.policy == POL_GEO_MEAN) g += rs.geo_wr * -rs.geo_adv * rs.geo_ratio * mt * dmin / rs.geo_den;
    *dent = 0.0;
    if (mt == 0.0) return g;
    if (p.policy != POL_GEO_MEAN) {
        st[GS_PG_LOSS] += rs.w_pg * mt * pm * tt.pg;
        g += rs.w_pg * mt * pm * tt.dpg;
    }
    if (p.has_kl) {
        double dk;
        const double k = kl_term(p.kl_est, lp, v.ref, p, &dk);
        double kv = k, dkv = dk;
        if (p.kl_ratio_w) {
            if (p.policy == POL_GSPO) {
                *spread_kl += rs.w_agg * mt * k;
                kv = k * rs.gspo_s;
                dkv = dk * rs.gspo_s;
            } else {
                const double rr = exp(delta);
                kv = k * rr;
                dkv = dk * rr + k * rr;
            }
        }
        st[GS_KL_LOSS] += rs.w_agg * mt * p.beta * kv;
        g += rs.w_agg * mt * p.beta * dkv;
        st[GS_KL] += mt * kv;
    }
    if (has_ent) {
        const double h = v.h;
        st[GS_ENT_LOSS] -= rs.w_agg * mt * p.ent_coef * h;
        *dent = -p.ent_coef * rs.w_agg * mt;
        st[GS_ENT] += mt * h;
    }
    st[GS_ACTIVE] += mt;
    st[GS_LOW] += mt * (double)tt.low;
    st[GS_HIGH] += mt * (double)tt.high;
    st[GS_CLIP] += mt * (double)tt.clipped;
    st[GS_DUAL] += mt * (double)tt.dual;
    st[GS_AKL] += mt * tt.akl;
    st[GS_RATIO] += mt * tt.ratio;
    return g;
}

// Sums each of v[0..N) over the block (fixed tree); every thread gets the sums.
template <int N>
__device__ void block_sum_vec(double* v, double (*scratch)[32]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int k = 0; k < N; k++) v[k] = warp_sum_d(v[k]);
    __syncthreads(); // scratch may still be read by a previous call
    if (lane == 0)
        for (int k = 0; k < N; k++) scratch[k][warp] = v[k];
    __syncthreads();
    for (int k = 0; k < N; k++) v[k] = warp_sum_d(lane < nw ? scratch[k][lane] : 0.0);
}

// Grid: one block per response (GRPO_THREADS threads). Response r is tokens
// [r row_len, (r + 1) row_len) when row_len > 0 (offsets unread, may be null), else
// [offsets[r], offsets[r + 1]) (offsets has rows + 1 entries).
// dentropy may be null (then entropy must be null too); ref_logp, entropy, pg_mask, selected
// are null when unused. adv has one value per response, or per token if adv_per_token.
extern "C" __global__ void __launch_bounds__(256) grpo_loss_f32(
    float* dlogp, float* dentropy, double* partials, const float* logp, const float* logp_old,
    const float* ref_logp, const float* entropy, const float* adv, int adv_per_token, const float* mask,
    const float* pg_mask, const unsigned char* selected, const long long* offsets, long long row_len,
    GRPO_PRM_ARGS) {
    SHARED(double, red, [GS_COUNT + 2][32]);
    const GrpoPrm p = GRPO_PRM_MAKE;
    const long long r = blockIdx.x;
    const long long a0 = row_len > 0 ? r * row_len : offsets[r];
    const long long b0 = row_len > 0 ? a0 + row_len : offsets[r + 1];
    const TokIn in = {logp, logp_old, ref_logp, entropy, adv, mask, pg_mask, selected, adv_per_token};

    // Pass A: the response's sums (active tokens, GSPO's log-ratio sum, GMPO's sums).
    double sa[4] = {0.0, 0.0, 0.0, 0.0};
    const bool seq_level = p.policy == POL_GSPO || p.policy == POL_GEO_MEAN;
    for (long long t = a0 + threadIdx.x; t < b0; t += blockDim.x) {
        const double mt = mask[t];
        sa[0] += mt;
        if (!seq_level) continue; // token-level losses need only n_i: read the mask alone
        const double d = (double)logp[t] - (double)logp_old[t];
        sa[1] += mt * d;
        if (p.policy == POL_GEO_MEAN) {
            const double at = adv[adv_per_token ? t : r];
            double dmin;
            sa[2] += mt * geo_term(d, at, p, &dmin);
            sa[3] += mt * at;
        }
    }
    block_sum_vec<4>(sa, red);
    Resp rs;
    rs.n_i = sa[0];
    rs.w_agg = token_weight(p.agg, rs.n_i, p);
    rs.w_pg = token_weight(p.pg_agg, rs.n_i, p);
    {
        const double seq_lr = sa[1] / fmax(rs.n_i, 1.0);
        const double l = seq_lr > p.gspo_cap ? p.gspo_cap : seq_lr;
        const double dl = seq_lr > p.gspo_cap ? 0.0 : 1.0;
        rs.gspo_s = exp(l);
        rs.gspo_ds = exp(l) * dl;
    }
    rs.geo_den = p.conv == CONV_TRL ? fmax(rs.n_i, 1.0) : rs.n_i + 1e-8;
    rs.geo_ratio = exp(sa[2] / rs.geo_den);
    rs.geo_adv = sa[3] / rs.geo_den;
    rs.geo_wr = p.n_rows > 0.0 ? 1.0 / p.n_rows : 0.0;

    // Pass B: per-token terms; the gradient is final here except for GSPO's spread.
    double st[GS_COUNT + 2];
    for (int k = 0; k < GS_COUNT + 2; k++) st[k] = 0.0;
    for (long long t = a0 + threadIdx.x; t < b0; t += blockDim.x) {
        double dent;
        const double g =
            grpo_token(grpo_load_tok(in, t, r), entropy != nullptr, p, rs, st, &st[GS_COUNT], &st[GS_COUNT + 1], &dent);
        if (p.policy != POL_GSPO) dlogp[t] = (float)g;
        if (dentropy) dentropy[t] = (float)dent;
    }
    block_sum_vec<GS_COUNT + 2>(st, red);
    if (p.policy == POL_GEO_MEAN) st[GS_PG_LOSS] += rs.geo_wr * -rs.geo_adv * rs.geo_ratio;

    // Pass C (GSPO): the sequence ratio carries the gradient of the mean log-ratio to every
    // token: d s / d logp_t = s [below the cap] m_t / max(n_i, 1). The token term is
    // recomputed (same inputs, same bits) rather than stored.
    if (p.policy == POL_GSPO) {
        const double spread = st[GS_COUNT] + p.beta * st[GS_COUNT + 1];
        double scratch[GS_COUNT + 2] = {}; // contributions already counted in pass B
        for (long long t = a0 + threadIdx.x; t < b0; t += blockDim.x) {
            double dent, s1 = 0.0, s2 = 0.0;
            double g = grpo_token(grpo_load_tok(in, t, r), entropy != nullptr, p, rs, scratch, &s1, &s2, &dent);
            g += rs.gspo_ds * (double)mask[t] / fmax(rs.n_i, 1.0) * spread;
            dlogp[t] = (float)g;
        }
    }
    if (threadIdx.x == 0)
        for (int k = 0; k < GS_COUNT; k++) partials[r * GS_COUNT + k] = st[k];
}

// Grid: clamp(ceil(n / 4 / (GRPO_THREADS * GRPO_STREAM_CHUNKS)), 1, GRPO_STREAM_MAX_BLOCKS)
// blocks of GRPO_THREADS threads (the launcher computes it from n alone, so the order of every
// sum is fixed by n). Thread i of the grid takes the 4-token chunks i, i + grid threads, ...;
// a chunk is read and written with 16-byte accesses when every buffer is 16-byte aligned (the
// caching allocator's blocks are; the chunk starts at a multiple of 4 tokens), else, and for
// the last n % 4 tokens, one value at a time. Advantages are per token (adv_per_token), or per
// response: response r is tokens [r row_len, (r + 1) row_len) when row_len > 0 (equal lengths:
// no offsets at all), else [offsets[r], offsets[r + 1]) found by a binary search at the
// chunk's first token (offsets then has rows + 1 entries). The weights w_agg and w_pg are the
// same for every token here (the launcher picks this kernel only then); partials gets one row
// of GS_COUNT sums per block.
#define GRPO_STREAM_CHUNKS 2
#define GRPO_STREAM_MAX_BLOCKS 4096

// The response holding token t: the last r with offsets[r] <= t (then t < offsets[r + 1], so
// empty responses are skipped).
__device__ __forceinline__ long long grpo_row_of(const long long* offsets, long long rows, long long t) {
    long long lo = 0, hi = rows; // offsets[lo] <= t < offsets[hi]
    while (hi - lo > 1) {
        const long long mid = lo + ((hi - lo) >> 1);
        if (offsets[mid] <= t) lo = mid;
        else hi = mid;
    }
    return lo;
}

struct __align__(16) grpo_f4 {
    float x, y, z, w;
};
struct __align__(4) grpo_u8x4 {
    unsigned char x, y, z, w;
};
__device__ __forceinline__ void grpo_f4_split(grpo_f4 a, float* o) {
    o[0] = a.x;
    o[1] = a.y;
    o[2] = a.z;
    o[3] = a.w;
}

extern "C" __global__ void __launch_bounds__(256) grpo_loss_stream_f32(
    float* dlogp, float* dentropy, double* partials, const float* logp, const float* logp_old,
    const float* ref_logp, const float* entropy, const float* adv, int adv_per_token, const float* mask,
    const float* pg_mask, const unsigned char* selected, const long long* offsets, long long rows,
    long long row_len, long long n, GRPO_PRM_ARGS) {
    SHARED(double, red, [GS_COUNT][32]);
    const GrpoPrm p = GRPO_PRM_MAKE;
    Resp rs = {};
    rs.w_agg = token_weight(p.agg, 0.0, p); // the active count is not read by these weights
    rs.w_pg = token_weight(p.pg_agg, 0.0, p);
    const bool has_ent = entropy != nullptr;
    const unsigned long long addr = (unsigned long long)dlogp | (unsigned long long)logp |
                                    (unsigned long long)logp_old | (unsigned long long)mask |
                                    (unsigned long long)(dentropy ? dentropy : dlogp) |
                                    (unsigned long long)(ref_logp ? ref_logp : logp) |
                                    (unsigned long long)(entropy ? entropy : logp) |
                                    (unsigned long long)(pg_mask ? pg_mask : logp) |
                                    (unsigned long long)(adv_per_token ? adv : logp);
    const bool vec = (addr & 15) == 0 && ((unsigned long long)selected & 3) == 0;
    double st[GS_COUNT];
    for (int k = 0; k < GS_COUNT; k++) st[k] = 0.0;
    const long long chunks = (n + 3) >> 2, stride = (long long)gridDim.x * blockDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const long long t0 = c << 2;
        const int cnt = n - t0 < 4 ? (int)(n - t0) : 4;
        float lp[4] = {}, old[4] = {}, mk[4] = {}, rf[4] = {}, en[4] = {}, pm[4] = {1.f, 1.f, 1.f, 1.f}, av[4] = {};
        unsigned char sel[4] = {};
        if (vec && cnt == 4) {
            grpo_f4_split(reinterpret_cast<const grpo_f4*>(logp)[c], lp);
            grpo_f4_split(reinterpret_cast<const grpo_f4*>(logp_old)[c], old);
            grpo_f4_split(reinterpret_cast<const grpo_f4*>(mask)[c], mk);
            if (ref_logp) grpo_f4_split(reinterpret_cast<const grpo_f4*>(ref_logp)[c], rf);
            if (entropy) grpo_f4_split(reinterpret_cast<const grpo_f4*>(entropy)[c], en);
            if (pg_mask) grpo_f4_split(reinterpret_cast<const grpo_f4*>(pg_mask)[c], pm);
            if (adv_per_token) grpo_f4_split(reinterpret_cast<const grpo_f4*>(adv)[c], av);
            if (selected) {
                const grpo_u8x4 s4 = reinterpret_cast<const grpo_u8x4*>(selected)[c];
                sel[0] = s4.x;
                sel[1] = s4.y;
                sel[2] = s4.z;
                sel[3] = s4.w;
            }
        } else {
            // Constant indices after unrolling keep the chunk in registers (a loop to `cnt`
            // would put these arrays in local memory).
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (k >= cnt) break;
                const long long t = t0 + k;
                lp[k] = logp[t];
                old[k] = logp_old[t];
                mk[k] = mask[t];
                if (ref_logp) rf[k] = ref_logp[t];
                if (entropy) en[k] = entropy[t];
                if (pg_mask) pm[k] = pg_mask[t];
                if (adv_per_token) av[k] = adv[t];
                if (selected) sel[k] = selected[t];
            }
        }
        if (!adv_per_token) {
            // Per-response advantages: the response of each token (a handful of cached reads).
            if (row_len > 0) {
                long long r = t0 / row_len; // one division a chunk, then steps
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    if (k >= cnt) break;
                    if (t0 + k >= (r + 1) * row_len) r++; // the next token is at most one row on
                    av[k] = adv[r];
                }
            } else {
                long long r = grpo_row_of(offsets, rows, t0);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    if (k >= cnt) break;
                    while (offsets[r + 1] <= t0 + k) r++; // past empty rows
                    av[k] = adv[r];
                }
            }
        }
        float g4[4] = {}, d4[4] = {};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (k >= cnt) break;
            const GrpoTok v = {mk[k], lp[k], old[k], rf[k], en[k], av[k], pm[k], sel[k] != 0};
            double dent, s1 = 0.0, s2 = 0.0;
            g4[k] = (float)grpo_token(v, has_ent, p, rs, st, &s1, &s2, &dent);
            d4[k] = (float)dent;
        }
        if (vec && cnt == 4) {
            reinterpret_cast<grpo_f4*>(dlogp)[c] = {g4[0], g4[1], g4[2], g4[3]};
            if (dentropy) reinterpret_cast<grpo_f4*>(dentropy)[c] = {d4[0], d4[1], d4[2], d4[3]};
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (k >= cnt) break;
                dlogp[t0 + k] = g4[k];
                if (dentropy) dentropy[t0 + k] = d4[k];
            }
        }
    }
    block_sum_vec<GS_COUNT>(st, red);
    if (threadIdx.x == 0)
        for (int k = 0; k < GS_COUNT; k++) partials[(long long)blockIdx.x * GS_COUNT + k] = st[k];
}

// Column sums of a row-major [rows, cols] f64 matrix in a fixed order: block c (of `cols`
// blocks, any multiple of 32 threads) writes out[c] = sum_r m[r, c], thread i summing rows
// i, i + blockDim, ... and then a fixed tree. Used for the partial-sum rows of the loss and
// of the advantages.
extern "C" __global__ void __launch_bounds__(256) reduce_rows_f64(const double* m, long long rows, int cols, double* out) {
    SHARED(double, scratch, [32]);
    const int c = blockIdx.x;
    double s = 0.0;
    for (long long i = threadIdx.x; i < rows; i += blockDim.x) s += m[i * cols + c];
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) out[c] = s;
}
