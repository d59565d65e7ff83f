// Fused GRPO-family policy loss: one block per response reads the response's token arrays
// (logp, old logp, ref logp, entropy, mask, policy mask, selection) and writes d loss / d logp
// and d loss / d entropy per token, plus one row of partial sums per response (loss parts and
// metric numerators). `grpo_partials_reduce` then folds the rows in a fixed order. No atomics:
// every sum has an order fixed by the block size alone, so the loss, the metrics and every
// token's gradient are bit-identical run after run, and a token's gradient does not depend on
// which other responses share the launch (micro-batching never changes it).
//
// The reference is src/rl/grpo.rs (`policy_loss_f64`; formulas and sources there and in
// grpo/{policy,kl,agg}.rs). This file follows it line by line, in f64: the reference is f64,
// log-ratios beyond +-88 overflow f32's exp, and the kernel is bound by memory bandwidth
// (24-32 bytes a token) long before f64 arithmetic limits it on an H100 (f64 at half the f32
// rate). Inputs and gradients are f32, as the trainer holds them.
//
// Options the host leaves unset (a clamp, TRL's delta, the dual clip) arrive as +inf, which
// never passes any comparison they appear in, so "unset" and "+inf" are the same formula.
#include "common.cuh"

// Parameter slots of the `prm` array (mirrored by src/backend/cuda/rl/grpo_loss.rs).
enum GrpoParam {
    GP_POLICY, GP_EPS_LOW, GP_EPS_HIGH, GP_DUAL_C, GP_TRL_DELTA, GP_HAS_KL, GP_KL_EST, GP_BETA,
    GP_KL_RATIO_W, GP_ENT_COEF, GP_CONV, GP_LR_CLAMP, GP_K3_INNER, GP_K3_VALUE, GP_GSPO_CAP,
    GP_TAU_POS, GP_TAU_NEG, GP_PPO_KL_COEF, GP_AGG, GP_PG_AGG, GP_N_TOKENS, GP_N_SEQS,
    GP_N_ROWS, GP_L_MAX, GP_COUNT
};
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

__device__ GrpoPrm grpo_prm(const double* p) {
    GrpoPrm q;
    q.policy = (int)p[GP_POLICY];
    q.kl_est = (int)p[GP_KL_EST];
    q.conv = (int)p[GP_CONV];
    q.agg = (int)p[GP_AGG];
    q.pg_agg = (int)p[GP_PG_AGG];
    q.has_kl = p[GP_HAS_KL] != 0.0;
    q.kl_ratio_w = p[GP_KL_RATIO_W] != 0.0;
    q.eps_low = p[GP_EPS_LOW];
    q.eps_high = p[GP_EPS_HIGH];
    q.dual_c = p[GP_DUAL_C];
    q.trl_delta = p[GP_TRL_DELTA];
    q.beta = p[GP_BETA];
    q.ent_coef = p[GP_ENT_COEF];
    q.lr_clamp = p[GP_LR_CLAMP];
    q.k3_inner = p[GP_K3_INNER];
    q.k3_value = p[GP_K3_VALUE];
    q.gspo_cap = p[GP_GSPO_CAP];
    q.tau_pos = p[GP_TAU_POS];
    q.tau_neg = p[GP_TAU_NEG];
    q.ppo_kl_coef = p[GP_PPO_KL_COEF];
    q.n_tokens = p[GP_N_TOKENS];
    q.n_seqs = p[GP_N_SEQS];
    q.n_rows = p[GP_N_ROWS];
    q.l_max = p[GP_L_MAX];
    return q;
}

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

// One token: returns d loss / d logp (before GSPO's spread), adds its contributions to
// st[GS_*] and the spreads, writes d loss / d entropy to *dent.
__device__ double grpo_token(long long t, long long r, const TokIn& in, const GrpoPrm& p, const Resp& rs,
                             double* st, double* spread_pg, double* spread_kl, double* dent) {
    const double mt = in.mask[t], lp = in.logp[t], old = in.logp_old[t];
    const double adv = in.adv[in.adv_per_token ? t : r];
    const double delta = lp - old;
    const double pm = in.pg_mask ? (double)in.pg_mask[t] : 1.0;
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
            if (in.selected[t]) { tt.pg = 0.0; tt.dpg = 0.0; tt.clipped = true; }
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
        if (in.selected[t]) {
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
        const double k = kl_term(p.kl_est, lp, (double)in.ref_logp[t], p, &dk);
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
    if (in.entropy) {
        const double h = in.entropy[t];
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

// Grid: one block per response (GRPO_THREADS threads). `offsets` has rows + 1 entries.
// dentropy may be null (then entropy must be null too); ref_logp, entropy, pg_mask, selected
// are null when unused. adv has one value per response, or per token if adv_per_token.
extern "C" __global__ void __launch_bounds__(256) grpo_loss_f32(
    float* dlogp, float* dentropy, double* partials, const float* logp, const float* logp_old,
    const float* ref_logp, const float* entropy, const float* adv, int adv_per_token, const float* mask,
    const float* pg_mask, const unsigned char* selected, const long long* offsets, const double* prm) {
    SHARED(double, red, [GS_COUNT + 2][32]);
    const GrpoPrm p = grpo_prm(prm);
    const long long r = blockIdx.x;
    const long long a0 = offsets[r], b0 = offsets[r + 1];
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
        const double g = grpo_token(t, r, in, p, rs, st, &st[GS_COUNT], &st[GS_COUNT + 1], &dent);
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
            double g = grpo_token(t, r, in, p, rs, scratch, &s1, &s2, &dent);
            g += rs.gspo_ds * (double)mask[t] / fmax(rs.n_i, 1.0) * spread;
            dlogp[t] = (float)g;
        }
    }
    if (threadIdx.x == 0)
        for (int k = 0; k < GS_COUNT; k++) partials[r * GS_COUNT + k] = st[k];
}

// Column sums of a [rows, cols] f64 matrix in a fixed order: one block (any multiple of 32
// threads), out[c] = sum_r m[r, c]. Used for the per-response partials of the loss and the
// per-group partials of the advantages.
extern "C" __global__ void __launch_bounds__(256) reduce_rows_f64(const double* m, long long rows, int cols, double* out) {
    SHARED(double, scratch, [32]);
    for (int c = 0; c < cols; c++) {
        double s = 0.0;
        for (long long i = threadIdx.x; i < rows; i += blockDim.x) s += m[i * cols + c];
        s = block_sum_d(s, scratch);
        if (threadIdx.x == 0) out[c] = s;
    }
}
