/* Fused per-channel statistics of one batch of float32 activations (CPU).
 *
 * Every function reads a batch laid out as (N, C, L) with element (n, c, l) at
 *   x[n * sn + c * sc + l * sl]
 * in one of two layouts: channels in the middle (sc = L, sl = 1: contiguous NCHW outputs) or
 * channels last (sc = 1, sl = C: channels-last conv outputs, linear outputs, tokens). It works
 * on the channels [c0, c1), so that several threads can share a batch with no locks.
 *
 * st_moments: per channel, in one pass over every value: a shift k (the channel's first value),
 * the sums of (x - k) and (x - k)^2 (the shifted-data variance: no cancellation when the mean
 * is far from zero), min, max and the number of non-zeros; with logs != 0 also the sum and sum
 * of squares of log|x| over the non-zero values. In the same call, while the channel is still
 * in cache, the histogram counts of the positions at the element offsets hoff (of channel 0)
 * and a copy of the values at the offsets coff (the covariance sample, one row of C per
 * position). Channel rows are reduced in float32 vector lanes that persist across the rows of a
 * channel (a row needs no reduction of its own) and are added into float64 every FOLD vector
 * steps; rows of at most W values (short_rows) in lanes of their own across a block of
 * channels; channel vectors (channels last) W channels a vector, the same way. The logs are
 * summed about a shift too (log|k|), and come out as count, sum and centred sum of squares.
 * st_sample_logs: the same log sums over positions given by their offsets.
 *
 * Compiled with finite-math flags (see native.py) so that min/max and the sums vectorise: no
 * comparison here may depend on NaN semantics. A NaN or infinite value still propagates into
 * the sums, which is how the caller detects it; the histogram tables mark "no edge in this
 * cell" with +inf, never NaN.
 *
 * log|x|: in float32 vector lanes (vlog_abs), or in float64 (log_abs) for the sampled positions
 * of channels-last batches given by offsets; both from the value's bits (exponent + a polynomial for the mantissa), so
 * that the loops vectorise; zeros are masked out.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define LN2 0.6931471805599453
#define SQRT2 1.4142135623730951
#define CB 1024 /* at most LANES */
#define RB 32
/* Positions ahead whose channels the channels-last loop prefetches. */
#define PF 4

static inline double log_abs(float v) {
    double d = fabs((double)v); /* exact, and every float32 (subnormals too) is a normal double */
    uint64_t b;
    memcpy(&b, &d, 8);
    double e = (double)((int64_t)(b >> 52) - 1023);
    b = (b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
    double m;
    memcpy(&m, &b, 8); /* in [1, 2) */
    int big = m > SQRT2;
    m = big ? 0.5 * m : m;
    e = big ? e + 1.0 : e;
    double s = (m - 1.0) / (m + 1.0); /* |s| <= 0.1716 */
    double s2 = s * s;
    double p = 2.0 / 13.0;
    p = p * s2 + 2.0 / 11.0;
    p = p * s2 + 2.0 / 9.0;
    p = p * s2 + 2.0 / 7.0;
    p = p * s2 + 2.0 / 5.0;
    p = p * s2 + 2.0 / 3.0;
    p = p * s2 + 2.0;
    return e * LN2 + s * p;
}

/* W floats a vector (the compiler's vector extensions: AVX-512 where -march=native has it,
 * two AVX2 halves or narrower units elsewhere). */

#define W 16

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
/* Vector steps a float32 lane takes before its sums go into float64: a lane sums at most 64
 * values of one channel, as blocks of 1,024 values over 16 lanes did before. */
#define FOLD 64

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
typedef double vd __attribute__((vector_size(8 * W)));
static inline double hsum(vf a) {
    vd d = __builtin_convertvector(a, vd);
    double s = 0;
    for (int j = 0; j < W; j++) s += d[j];
    return s;
}

/* log|v| of W floats in float32 (relative error ~1e-7, as torch's float32 log), for v != 0:
 * the exponent plus log(m) for the mantissa m in [sqrt(1/2), sqrt(2)) as
 * t - t^2/2 + t^3 P(t), t = m - 1 (Cephes' logf polynomial: no division); subnormals are
 * scaled by 2^23 first. Lanes where v == 0 give a finite value the caller masks. */
static inline vf vlog_abs(vf v) {
    const vf zero = {0};
    const vi absmask = (vi)(zero + 0.0f) | 0x7FFFFFFF;
    vi b = (vi)v & absmask;
    vi sub = b < 0x00800000;                      /* subnormal (or zero) lanes */
    vf scaled = (vf)b * 8388608.0f;               /* exact for subnormals */
    b = (b & ~sub) | ((vi)scaled & sub);
    vf e = __builtin_convertvector((b >> 23) - 127, vf) - (vf)(sub & (vi)(zero + 23.0f));
    vf m = (vf)((b & 0x007FFFFF) | 0x3F800000);   /* [1, 2) */
    vi big = m > 1.41421356f;
    m = vsel(big, m * 0.5f, m);
    e = e + (vf)((vi)(zero + 1.0f) & big);
    vf t = m - 1.0f;                              /* [-0.293, 0.414] */
    vf t2 = t * t;
    vf p = zero + 7.0376836292E-2f;
    p = p * t - 1.1514610310E-1f;
    p = p * t + 1.1676998740E-1f;
    p = p * t - 1.2420140846E-1f;
    p = p * t + 1.4249322787E-1f;
    p = p * t - 1.6668057665E-1f;
    p = p * t + 2.0000714765E-1f;
    p = p * t - 2.4999993993E-1f;
    p = p * t + 3.3333331174E-1f;
    vf lm = t + t2 * (t * p - 0.5f);
    return e * 0.693147180559945f + lm;
}

/* Sampling settings of st_moments, one int64 array:
 *   [0] lrate: 0 no logs, 1 logs of every value, R > 1 logs of the values in every R-th block
 *       of W positions; [1] lphase: the batch's phase of those blocks;
 *   [2] hrate, [3] hphase: the same for the histogram (hrate 0: none, or at the kh offsets);
 *   [4] kh: histogram positions at the offsets hoff; [5] kc: covariance positions at coff;
 *   [6] bins.
 * Blocks of positions: position p = n * L + l lies in block n * ceil(L / W) + l / W; a block is
 * sampled when (block + phase) % rate == 0, so with a uniformly random phase every position is
 * sampled with probability exactly 1 / rate (running.py draws the same blocks for the eager
 * statistics). */
enum { LRATE, LPHASE, HRATE, HPHASE, KH, KC, BINS };

static inline int32_t bin_of(float v, const int32_t *low, const float *cut, int64_t bins) {
    int32_t bits;
    memcpy(&bits, &v, 4);
    int32_t h = (bits >> 16) + 32768;
    int32_t b = low[h] + (v >= cut[h] ? 1 : 0);
    return b < bins ? b : (int32_t)bins - 1; /* the +inf cell (cut +inf there) */
}

/* Running sums of one channel: float32 lanes (s, q: shifted sum and sum of squares; z: the
 * non-zero count; gz, g1, g2: count, sum and sum of squares of the sampled logs less the log shift) and vector
 * min/max, folded into float64 totals. */
typedef struct { vf s, q, z, gz, g1, g2, lo, hi; } acc_t;
typedef struct { double a1, a2, nz, lz, l1, l2; } tot_t;

typedef struct {
    int64_t lrate, hrate, bins;
    const int32_t *low;
    const float *cut;
} samp_t;

/* One vector of a channel (a macro over the local accumulators of channel_row); lanes outside
 * `m` hold the shift k (they add nothing: k - k = 0, and k is a value of the channel, so min/max
 * stay right). lcy / hcy: the block's place in the log / histogram cycles (0: sampled). */
#define STEP(v, m)                                                                \
    do {                                                                          \
        vf v_ = (v), d_ = v_ - k;                                                 \
        vi nzm_ = (v_ != zero) & (m);                                             \
        s += d_; q += d_ * d_;                                                    \
        lo = vmin(v_, lo); hi = vmax(v_, hi);                                     \
        z += (vf)((vi)one & nzm_);                                                \
        if (sp->lrate && lcy == 0) {                                              \
            vf g_ = (vf)((vi)(vlog_abs(v_) - lk) & nzm_);                         \
            gz += (vf)((vi)one & nzm_); g1 += g_; g2 += g_ * g_;                  \
        }                                                                         \
        if (sp->lrate && ++lcy == sp->lrate) lcy = 0;                             \
        if (++*steps == FOLD) {                                                   \
            t->a1 += hsum(s); t->a2 += hsum(q); t->nz += hsum(z);                 \
            t->lz += hsum(gz); t->l1 += hsum(g1); t->l2 += hsum(g2);              \
            s = zero; q = zero; z = zero; gz = zero; g1 = zero; g2 = zero;        \
            *steps = 0;                                                           \
        }                                                                         \
    } while (0)

/* One row of L contiguous values of a channel with shifts k, lk into its accumulators; lcy: the
 * row's first block's place in the log cycle. xend: one past the batch's last value; the row's last, partial vector is
 * read whole where that stays below it (the values after a row belong to the batch), else
 * copied. */
static inline void channel_row(const float *r, int64_t L, vf k, vf lk, acc_t *a, tot_t *t,
                               int *steps, const float *xend, const samp_t *sp, int64_t lcy) {
    const vf zero = {0};
    const vf one = zero + 1.0f;
    vi lanes;
    for (int j = 0; j < W; j++) lanes[j] = j;
    const vi all = lanes >= 0;
    vf s = a->s, q = a->q, z = a->z, gz = a->gz, g1 = a->g1, g2 = a->g2, lo = a->lo, hi = a->hi;
    int64_t l = 0;
    for (; L - l >= W; l += W) STEP(vload(r + l), all);
    if (l < L) {
        int64_t rem = L - l;
        vf v = k;
        if (r + l + W <= xend) v = vload(r + l);
        else memcpy(&v, r + l, (size_t)rem * sizeof(float));
        vi m = lanes < (int32_t)rem;
        STEP(vsel(m, v, k), m);
    }
    a->s = s; a->q = q; a->z = z; a->gz = gz; a->g1 = g1; a->g2 = g2; a->lo = lo; a->hi = hi;
}

/* Histogram counts of the contiguous values r[0..w) of w consecutive channels (channels last):
 * value j goes to the row hc + j * bins. With AVX-512, 16 channels at a time: their table
 * entries and counts gathered, the counts scattered back (16 different rows, so no two lanes
 * collide); measured 12% faster for a (64, 196, 768) batch's statistics. Channel rows (channels
 * in the middle) count through hist_block instead. */
static inline void hist_channels(const float *r, int64_t w, double *hc, const samp_t *sp) {
    int64_t j = 0;
#if defined(__AVX512F__)
    if (w * sp->bins <= INT32_MAX / 2) {
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                               14, 15);
        const __m512i row = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int32_t)sp->bins));
        const __m512i top = _mm512_set1_epi32((int32_t)sp->bins - 1);
        const __m512i half = _mm512_set1_epi32(32768);
        const __m512d one = _mm512_set1_pd(1.0);
        for (; j + W <= w; j += W) {
            __m512 v = _mm512_loadu_ps(r + j);
            __m512i key = _mm512_add_epi32(_mm512_srai_epi32(_mm512_castps_si512(v), 16), half);
            __m512i b = _mm512_i32gather_epi32(key, sp->low, 4);
            __m512 cut = _mm512_i32gather_ps(key, sp->cut, 4);
            __mmask16 ge = _mm512_cmp_ps_mask(v, cut, _CMP_GE_OQ);
            b = _mm512_mask_add_epi32(b, ge, b, _mm512_set1_epi32(1));
            b = _mm512_min_epi32(b, top);
            __m512i at = _mm512_add_epi32(row, b);
            double *hj = hc + j * sp->bins;
            __m256i lo = _mm512_castsi512_si256(at), hi = _mm512_extracti64x4_epi64(at, 1);
            __m512d c0 = _mm512_add_pd(_mm512_i32gather_pd(lo, hj, 8), one);
            __m512d c1 = _mm512_add_pd(_mm512_i32gather_pd(hi, hj, 8), one);
            _mm512_i32scatter_pd(hj, lo, c0, 8);
            _mm512_i32scatter_pd(hj, hi, c1, 8);
        }
    }
#endif
    for (; j < w; j++) hc[j * sp->bins + bin_of(r[j], sp->low, sp->cut, sp->bins)] += 1.0;
}

/* The bins of the m contiguous values r[0..m), into b: a loop the compiler vectorises, its table
 * lookups becoming gathers (the counts are added apart, see hist_block). */
static inline void bins_of(const float *restrict r, int64_t m, int32_t *restrict b,
                           const samp_t *sp) {
    for (int64_t t = 0; t < m; t++) b[t] = bin_of(r[t], sp->low, sp->cut, sp->bins);
}

/* Histogram counts of the positions [l0, l1) (at most W) of w channel rows r + j * sc: the bins
 * of each row's run of values first (bins_of), then the counts, position by position across
 * the channels, so that consecutive counts go to different rows and do not wait on each other.
 * The kernels' statistics ran 0.93-1.34x as fast as with the bin of one value found and counted
 * at a time, the same counts (benchmarks/bench_kernels_ab.py). tmp: w * W ints. */
static inline void hist_block(const float *r, int64_t sc, int64_t w, int64_t l0, int64_t l1,
                              double *hc, const samp_t *sp, int32_t *tmp) {
    const int64_t m = l1 - l0, bins = sp->bins;
    for (int64_t j = 0; j < w; j++) bins_of(r + j * sc + l0, m, tmp + j * W, sp);
    for (int64_t t = 0; t < m; t++)
        for (int64_t j = 0; j < w; j++) hc[j * bins + tmp[j * W + t]] += 1.0;
}

/* Histogram counts of channels [c0, c1) at the kh positions hoff, added to hist (C rows of
 * `bins` doubles). The bin of v is low[h] + (v >= cut[h]) with h the upper 16 bits of v plus
 * 32768 (see _float32_bin_table in running.py). */
static void hist_range(const float *x, int64_t sc, const int64_t *hoff, int64_t kh, int64_t c0,
                       int64_t c1, const samp_t *sp, double *hist) {
    for (int64_t c = c0; c < c1; c++) {
        const float *xc = x + c * sc;
        double *hc = hist + c * sp->bins;
        for (int64_t i = 0; i < kh; i++) hc[bin_of(xc[hoff[i]], sp->low, sp->cut, sp->bins)] += 1.0;
    }
}

/* The values of channels [c0, c1) at the kc positions coff, into sub (kc rows of C floats). */
static void gather_range(const float *x, int64_t C, int64_t sc, const int64_t *coff,
                         int64_t kc, int64_t c0, int64_t c1, float *sub) {
    for (int64_t c = c0; c < c1; c++) {
        const float *xc = x + c * sc;
        for (int64_t i = 0; i < kc; i++) sub[i * C + c] = xc[coff[i]];
    }
}

static inline int64_t cycle(int64_t block, int64_t phase, int64_t rate) {
    return rate ? (block + phase) % rate : 1;
}

/* The log shift of a channel whose value shift is k: log|k| (0 for k == 0), as a float, so
 * that the float32 lanes sum log|x| - lk (small where the logs spread little around a large
 * mean, which raw sums of squares would lose to rounding). */
static inline float log_shift(float k) { return k != 0.0f ? (float)log_abs(k) : 0.0f; }

/* The log outputs of a channel from its sums of shifted logs: count, sum of log|x| and the
 * sum of squared deviations from their mean. */
static inline void log_out(double cnt, double s1, double s2, float lk, double *lc, double *l1,
                           double *l2) {
    double m2 = cnt > 0 ? s2 - s1 * s1 / cnt : 0.0;
    *lc = cnt; *l1 = s1 + cnt * (double)lk; *l2 = m2 > 0 ? m2 : 0.0;
}

/* Float32 lanes that persist across the images of a block of short rows (lane j: position
 * j % L of channel j / L) or across the positions of a block of channels-last channels (lane j:
 * channel j), each with its shift k and log shift lk, added into float64 totals per lane every
 * FOLD steps (lanes_step). */
#define LANES 1024
typedef struct {
    vf k[LANES / W], lk[LANES / W], s[LANES / W], q[LANES / W], z[LANES / W];
    vf gz[LANES / W], g1[LANES / W], g2[LANES / W], lo[LANES / W], hi[LANES / W];
    double a1[LANES], a2[LANES], nz[LANES], lz[LANES], l1[LANES], l2[LANES];
    int64_t nvec, rem; /* vectors in use, and lanes in use in the last one */
    vi last;           /* those lanes */
    int steps;
} lanes_t;

/* Start n <= LANES lanes with the shifts kf (n floats, in an array with room for whole
 * vectors: the rest is set to 0). */
static void lanes_start(lanes_t *a, float *kf, int64_t n) {
    const vf zero = {0};
    vi lanes;
    for (int j = 0; j < W; j++) lanes[j] = j;
    a->nvec = (n + W - 1) / W;
    a->rem = n - (a->nvec - 1) * W;
    a->last = lanes < (int32_t)a->rem;
    for (int64_t j = n; j < a->nvec * W; j++) kf[j] = 0.0f;
    for (int64_t v = 0; v < a->nvec; v++) {
        const vf kv = vload(kf + v * W);
        a->k[v] = kv; a->lo[v] = kv; a->hi[v] = kv;
        for (int i = 0; i < W; i++) a->lk[v][i] = log_shift(kv[i]);
        a->s[v] = zero; a->q[v] = zero; a->z[v] = zero;
        a->gz[v] = zero; a->g1[v] = zero; a->g2[v] = zero;
    }
    for (int64_t j = 0; j < n; j++) {
        a->a1[j] = 0; a->a2[j] = 0; a->nz[j] = 0; a->lz[j] = 0; a->l1[j] = 0; a->l2[j] = 0;
    }
    a->steps = 0;
}

/* Vector v of the lanes' next values, starting at r (the logs too where `logs`). The last
 * vector is read whole where that stays below xend (one past the batch's last value), else
 * copied; its lanes not in use hold the shift (they add nothing, and min/max stay right). */
static inline void lanes_add(lanes_t *restrict a, int64_t v, const float *restrict r,
                             const float *xend, int logs) {
    const vf zero = {0};
    const vf one = zero + 1.0f;
    const vf k = a->k[v];
    vf val;
    vi m = ~(vi)zero; /* every lane */
    if (v < a->nvec - 1) {
        val = vload(r);
    } else {
        val = k;
        if (r + W <= xend) val = vload(r);
        else memcpy(&val, r, (size_t)a->rem * sizeof(float));
        m = a->last;
        val = vsel(m, val, k);
    }
    vf d = val - k;
    vi nzm = (val != zero) & m;
    a->s[v] += d; a->q[v] += d * d;
    a->lo[v] = vmin(val, a->lo[v]); a->hi[v] = vmax(val, a->hi[v]);
    a->z[v] += (vf)((vi)one & nzm);
    if (logs) {
        vf g = (vf)((vi)(vlog_abs(val) - a->lk[v]) & nzm);
        a->gz[v] += (vf)((vi)one & nzm); a->g1[v] += g; a->g2[v] += g * g;
    }
}

/* The end of a step (one value added to every lane): into float64 every FOLD steps and at
 * the last one. */
static inline void lanes_step(lanes_t *restrict a, int last_step) {
    if (++a->steps < FOLD && !last_step) return;
    const vf zero = {0};
    for (int64_t v = 0; v < a->nvec; v++) {
        const int64_t m = v == a->nvec - 1 ? a->rem : W;
        for (int64_t i = 0; i < m; i++) {
            const int64_t j = v * W + i;
            a->a1[j] += a->s[v][i]; a->a2[j] += a->q[v][i]; a->nz[j] += a->z[v][i];
            a->lz[j] += a->gz[v][i]; a->l1[j] += a->g1[v][i]; a->l2[j] += a->g2[v][i];
        }
        a->s[v] = zero; a->q[v] = zero; a->z[v] = zero;
        a->gz[v] = zero; a->g1[v] = zero; a->g2[v] = zero;
    }
    a->steps = 0;
}

/* Channels in the middle with short rows (feature maps of 8x8 and smaller, see st_moments):
 * the rows of one image's block of channels are one contiguous run (sc == L), reduced a vector
 * at a time in lanes of their own (lane j: channel j / L, position j % L) that persist across
 * the images and are added per channel at the end, so no lane is wasted on the end of a row.
 * The logs of an image are all sampled or none (rows of at most W values are one block, and
 * longer ones come here only with every block's logs or none); the histogram's blocks are
 * picked one by one. */
#define SPAN 512 /* at most LANES */
#define SHORT 64
static void short_rows(const float *x, int64_t n_img, int64_t C, int64_t L, int64_t sn,
                       int64_t sc, int64_t c0, int64_t c1, const int64_t *cfg, double *out,
                       const int64_t *hoff, const samp_t *sp, double *hist, const int64_t *coff,
                       float *sub) {
    double *shift = out, *s1 = out + C, *s2 = out + 2 * C, *mn = out + 3 * C, *mx = out + 4 * C;
    double *nz = out + 5 * C, *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    const int64_t lphase = cfg[LPHASE], hphase = cfg[HPHASE], kh = cfg[KH], kc = cfg[KC];
    const float *xend = x + (n_img - 1) * sn + (C - 1) * sc + L;
    const int64_t bw = SPAN / L, nv = (L + W - 1) / W;
    float kf[SPAN + W];
    int32_t tmp[SPAN + W]; /* bins: span ints (one block a row), else w * W (w <= SPAN / W) */
    lanes_t a;
    for (int64_t b0 = c0; b0 < c1; b0 += bw) {
        const int64_t w = c1 - b0 < bw ? c1 - b0 : bw, span = w * L;
        for (int64_t j = 0; j < span; j++) kf[j] = x[(b0 + j / L) * sc];
        lanes_start(&a, kf, span);
        for (int64_t n = 0; n < n_img; n++) {
            const float *r = x + n * sn + b0 * sc;
            const int logs = sp->lrate && cycle(n * nv, lphase, sp->lrate) == 0;
            for (int64_t v = 0; v < a.nvec; v++) lanes_add(&a, v, r + v * W, xend, logs);
            /* the histogram's blocks: their bins found in one vectorised loop, then counted */
            if (sp->hrate && nv == 1 && cycle(n, hphase, sp->hrate) == 0) {
                /* one block a row: the bins of the whole run of the block's rows at once */
                double *hc = hist + b0 * sp->bins;
                bins_of(r, span, tmp, sp);
                for (int64_t j = 0; j < w; j++) /* a row at a time: measured faster here */
                    for (int64_t l = 0; l < L; l++) hc[j * sp->bins + tmp[j * L + l]] += 1.0;
            }
            for (int64_t b = 0; sp->hrate && nv > 1 && b < nv; b++) {
                if (cycle(n * nv + b, hphase, sp->hrate) != 0) continue;
                const int64_t e = (b + 1) * W < L ? (b + 1) * W : L;
                hist_block(r, L, w, b * W, e, hist + b0 * sp->bins, sp, tmp);
            }
            lanes_step(&a, n == n_img - 1);
        }
        for (int64_t j = 0; j < w; j++) { /* a channel's L lanes */
            const int64_t c = b0 + j;
            double t1 = 0, t2 = 0, tz = 0, tl = 0, u1 = 0, u2 = 0;
            float vlo = kf[j * L], vhi = vlo;
            for (int64_t l = 0; l < L; l++) {
                const int64_t i = j * L + l, v = i / W;
                t1 += a.a1[i]; t2 += a.a2[i]; tz += a.nz[i]; tl += a.lz[i]; u1 += a.l1[i]; u2 += a.l2[i];
                vlo = a.lo[v][i % W] < vlo ? a.lo[v][i % W] : vlo;
                vhi = a.hi[v][i % W] > vhi ? a.hi[v][i % W] : vhi;
            }
            shift[c] = (double)kf[j * L]; s1[c] = t1; s2[c] = t2; mn[c] = vlo; mx[c] = vhi;
            nz[c] = tz;
            if (sp->lrate) log_out(tl, u1, u2, a.lk[(j * L) / W][(j * L) % W], lc + c, l1 + c, l2 + c);
        }
        if (kh) hist_range(x, sc, hoff, kh, b0, b0 + w, sp, hist);
        if (kc) gather_range(x, C, sc, coff, kc, b0, b0 + w, sub);
    }
}

/* out: 9 arrays of C doubles, one after the other: shift, s1, s2, min, max, nonzero,
 * log count, log sum, log sum of squares (the last three only with lrate > 0). cfg: see above;
 * hist: C rows of cfg[BINS] doubles the counts are added to; sub: kc rows of C floats. */
void st_moments(const float *x, int64_t n_img, int64_t C, int64_t L, int64_t sn, int64_t sc,
                int64_t sl, int64_t c0, int64_t c1, const int64_t *cfg, double *out,
                const int64_t *hoff, const int32_t *low, const float *cut, double *hist,
                const int64_t *coff, float *sub) {
    double *shift = out, *s1 = out + C, *s2 = out + 2 * C, *mn = out + 3 * C, *mx = out + 4 * C;
    double *nz = out + 5 * C, *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    const samp_t sp = {cfg[LRATE], cfg[HRATE], cfg[BINS], low, cut};
    const int64_t lphase = cfg[LPHASE], hphase = cfg[HPHASE], kh = cfg[KH], kc = cfg[KC];
    const int64_t nv = (L + W - 1) / W; /* blocks per row */
    if (sl == 1 && sc == L && (L <= W || (L <= SHORT && sp.lrate <= 1))) {
        short_rows(x, n_img, C, L, sn, sc, c0, c1, cfg, out, hoff, &sp, hist, coff, sub);
        return;
    }
    if (sl == 1) { /* channels in the middle: every (n, c) is a contiguous run of L values */
        const float *xend = x + (n_img - 1) * sn + (C - 1) * sc + L;
        const vf zero = {0};
        /* blocks of channels whose rows of one image span about 4 KiB (at most RB channels) */
        int64_t bw = (1024 + L - 1) / L;
        bw = bw < 1 ? 1 : (bw > RB ? RB : bw);
        acc_t acc[RB];
        int32_t tmp[RB * W];
        tot_t tot[RB];
        int steps[RB];
        vf k[RB], lk[RB];
        for (int64_t b0 = c0; b0 < c1; b0 += bw) {
            const int64_t w = c1 - b0 < bw ? c1 - b0 : bw;
            for (int64_t j = 0; j < w; j++) {
                k[j] = zero + x[(b0 + j) * sc];
                lk[j] = zero + log_shift(x[(b0 + j) * sc]);
                acc_t a = {zero, zero, zero, zero, zero, zero, k[j], k[j]};
                tot_t t = {0, 0, 0, 0, 0, 0};
                acc[j] = a;
                tot[j] = t;
                steps[j] = 0;
            }
            /* image by image, so that memory is read in order (channel by channel, each row
             * of a small feature map would start on a page of its own) */
            for (int64_t n = 0; n < n_img; n++) {
                const float *r = x + n * sn + b0 * sc;
                const int64_t lcy = cycle(n * nv, lphase, sp.lrate);
                const int64_t hcy = cycle(n * nv, hphase, sp.hrate);
                for (int64_t j = 0; j < w; j++)
                    channel_row(r + j * sc, L, k[j], lk[j], &acc[j], &tot[j], &steps[j], xend, &sp,
                                lcy);
                if (sp.hrate) /* the histogram's blocks of this image, while its rows are in
                    * L1; channel by channel within a position, so that consecutive counts go
                    * to different rows and do not wait on each other */
                    for (int64_t b = (sp.hrate - hcy) % sp.hrate; b * W < L; b += sp.hrate) {
                        const int64_t e = (b + 1) * W < L ? (b + 1) * W : L;
                        hist_block(r, sc, w, b * W, e, hist + b0 * sp.bins, &sp, tmp);
                    }
            }
            for (int64_t j = 0; j < w; j++) {
                const int64_t c = b0 + j;
                acc_t *a = &acc[j];
                tot_t *t = &tot[j];
                t->a1 += hsum(a->s); t->a2 += hsum(a->q); t->nz += hsum(a->z);
                t->lz += hsum(a->gz); t->l1 += hsum(a->g1); t->l2 += hsum(a->g2);
                float lo = k[j][0], hi = lo;
                for (int i = 0; i < W; i++) {
                    lo = a->lo[i] < lo ? a->lo[i] : lo;
                    hi = a->hi[i] > hi ? a->hi[i] : hi;
                }
                shift[c] = (double)k[j][0]; s1[c] = t->a1; s2[c] = t->a2;
                mn[c] = lo; mx[c] = hi; nz[c] = t->nz;
                if (sp.lrate) log_out(t->lz, t->l1, t->l2, lk[j][0], lc + c, l1 + c, l2 + c);
            }
            if (kh) hist_range(x, sc, hoff, kh, b0, b0 + w, &sp, hist);
            if (kc) gather_range(x, C, sc, coff, kc, b0, b0 + w, sub);
        }
        return;
    }
    /* channels last: each position is a contiguous run of the channels [c0, c1), reduced in
     * blocks of CB channels, W channels a vector, whose float32 lanes (one channel each) stay
     * in L1 and go into float64 every FOLD positions; the logs of sampled positions in the
     * same vectors, the histogram of sampled positions in a second loop over the same run */
    const float *xend = x + (n_img - 1) * sn + (L - 1) * sl + C;
    float kf[CB];
    lanes_t a;
    for (int64_t b0 = c0; b0 < c1; b0 += CB) {
        const int64_t w = c1 - b0 < CB ? c1 - b0 : CB;
        memcpy(kf, x + b0, (size_t)w * sizeof(float));
        lanes_start(&a, kf, w);
        for (int64_t n = 0; n < n_img; n++) {
            int logs = 0, hs = 0;
            for (int64_t l = 0; l < L; l++) {
                const float *restrict r = x + n * sn + l * sl + b0;
                if (l % W == 0) { /* a new block of positions: its place in the cycles */
                    const int64_t block = n * nv + l / W;
                    logs = sp.lrate && cycle(block, lphase, sp.lrate) == 0;
                    hs = sp.hrate && cycle(block, hphase, sp.hrate) == 0;
                }
                for (int64_t v = 0; v < a.nvec; v++) {
                    __builtin_prefetch(r + PF * sl + v * W);
                    lanes_add(&a, v, r + v * W, xend, logs);
                }
                if (hs) hist_channels(r, w, hist + b0 * sp.bins, &sp);
                lanes_step(&a, n == n_img - 1 && l == L - 1);
            }
        }
        for (int64_t j = 0; j < w; j++) {
            const int64_t c = b0 + j, v = j / W, i = j % W;
            shift[c] = (double)kf[j]; s1[c] = a.a1[j]; s2[c] = a.a2[j];
            mn[c] = a.lo[v][i]; mx[c] = a.hi[v][i]; nz[c] = a.nz[j];
            if (sp.lrate) log_out(a.lz[j], a.l1[j], a.l2[j], a.lk[v][i], lc + c, l1 + c, l2 + c);
        }
        if (kh) hist_range(x, sc, hoff, kh, b0, b0 + w, &sp, hist);
        if (kc) gather_range(x, C, sc, coff, kc, b0, b0 + w, sub);
    }
}

/* Log sums over k positions given by their element offsets off[i] (of channel 0; channel c
 * is at off[i] + c * sc); out as in st_moments (slots 6-8). */
void st_sample_logs(const float *x, int64_t C, int64_t sc, const int64_t *off, int64_t k,
                    int64_t c0, int64_t c1, double *out) {
    double *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    if (sc != 1) { /* channel rows: gather W positions into a vector, float32 logs */
        const vf zero = {0};
        const vf one = zero + 1.0f;
        for (int64_t c = c0; c < c1; c++) {
            const float *xc = x + c * sc;
            double g0 = 0, g1 = 0, g2 = 0;
            int64_t i = 0;
            while (k - i >= W) {
                int64_t end = i + ((k - i > FOLD * W ? FOLD * W : k - i) / W) * W;
                vf a0 = zero, a1 = zero, a2 = zero;
                for (; i < end; i += W) {
                    vf v;
                    for (int j = 0; j < W; j++) v[j] = xc[off[i + j]];
                    vi nzm = v != zero;
                    vf g = (vf)((vi)vlog_abs(v) & nzm);
                    a0 += (vf)((vi)one & nzm); a1 += g; a2 += g * g;
                }
                g0 += hsum(a0); g1 += hsum(a1); g2 += hsum(a2);
            }
            for (; i < k; i++) {
                float v = xc[off[i]];
                if (v != 0.0f) { double g = log_abs(v); g0 += 1; g1 += g; g2 += g * g; }
            }
            log_out(g0, g1, g2, 0.0f, lc + c, l1 + c, l2 + c);
        }
        return;
    }
    for (int64_t b0 = c0; b0 < c1; b0 += CB) {
        const int64_t w = c1 - b0 < CB ? c1 - b0 : CB;
        double g0[CB], g1[CB], g2[CB];
        for (int64_t j = 0; j < w; j++) { g0[j] = 0; g1[j] = 0; g2[j] = 0; }
        for (int64_t i = 0; i < k; i++) {
            const float *restrict r = x + off[i] + b0;
            for (int64_t j = 0; j < w; j++) {
                float v = r[j];
                double q = v != 0.0f ? 1.0 : 0.0;
                double g = log_abs(v) * q;
                g0[j] += q; g1[j] += g; g2[j] += g * g;
            }
        }
        for (int64_t j = 0; j < w; j++)
            log_out(g0[j], g1[j], g2[j], 0.0f, lc + b0 + j, l1 + b0 + j, l2 + b0 + j);
    }
}

/* The two kernels over the channels [c0, c1) split between nt threads. With OpenMP they run on
 * the process's OpenMP threads: those of torch, which ships the same libgomp (linked once per
 * process), so the threads that just ran the layer take the statistics over at once, where
 * threads of our own would compete with theirs for the cores while they spin-wait. */
#define SPLIT(call)                                                          \
    do {                                                                     \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")         \
        for (int i = 0; i < nt; i++) {                                       \
            const int64_t a = c0 + (c1 - c0) * i / nt, b = c0 + (c1 - c0) * (i + 1) / nt; \
            call;                                                            \
        }                                                                    \
    } while (0)

static void st_moments_par(int nt, const float *x, int64_t n_img, int64_t C, int64_t L, int64_t sn,
                    int64_t sc, int64_t sl, int64_t c0, int64_t c1, const int64_t *cfg,
                    double *out, const int64_t *hoff, const int32_t *low, const float *cut,
                    double *hist, const int64_t *coff, float *sub) {
    SPLIT(st_moments(x, n_img, C, L, sn, sc, sl, a, b, cfg, out, hoff, low, cut, hist, coff, sub));
}

/* Everything one st_moments call reads and writes, by name: native.py mirrors this struct field
 * for field (class MomentsArgs) and checks sizeof and the field offsets through st_args_layout
 * before the first call, so the two cannot drift apart silently. Pointers the call does not
 * use are NULL (hoff, low, cut, hist without a histogram; coff, sub without a covariance
 * sample). */
typedef struct {
    const float *x;                /* the batch: element (n, c, l) at x[n*sn + c*sc + l*sl] */
    int64_t n_img, C, L, sn, sc, sl;
    int64_t c0, c1;                /* the channels to reduce, [c0, c1) */
    int64_t lrate, lphase;         /* logs: 0 none, 1 every value, R every R-th block from lphase */
    int64_t hrate, hphase;         /* histogram blocks, the same way (0: none, or the kh offsets) */
    int64_t kh, kc, bins;          /* histogram offsets, covariance offsets, histogram bins */
    double *out;                   /* 9 rows of C doubles (see st_moments) */
    const int64_t *hoff;           /* kh element offsets of channel 0 */
    const int32_t *low;            /* the bin tables, 65536 entries each */
    const float *cut;
    double *hist;                  /* C rows of bins doubles the counts are added to */
    const int64_t *coff;           /* kc element offsets of channel 0 */
    float *sub;                    /* kc rows of C floats: the covariance sample */
} st_moments_args;

/* sizeof(st_moments_args), then the offset of every field in declaration order (23 fields). */
int64_t st_args_layout(int64_t *offsets) {
    static const int64_t off[] = {
        offsetof(st_moments_args, x), offsetof(st_moments_args, n_img),
        offsetof(st_moments_args, C), offsetof(st_moments_args, L), offsetof(st_moments_args, sn),
        offsetof(st_moments_args, sc), offsetof(st_moments_args, sl),
        offsetof(st_moments_args, c0), offsetof(st_moments_args, c1),
        offsetof(st_moments_args, lrate), offsetof(st_moments_args, lphase),
        offsetof(st_moments_args, hrate), offsetof(st_moments_args, hphase),
        offsetof(st_moments_args, kh), offsetof(st_moments_args, kc),
        offsetof(st_moments_args, bins), offsetof(st_moments_args, out),
        offsetof(st_moments_args, hoff), offsetof(st_moments_args, low),
        offsetof(st_moments_args, cut), offsetof(st_moments_args, hist),
        offsetof(st_moments_args, coff), offsetof(st_moments_args, sub)};
    for (int i = 0; i < (int)(sizeof off / sizeof off[0]); i++) offsets[i] = off[i];
    return (int64_t)sizeof(st_moments_args);
}

/* st_moments_par with its arguments in one struct (the entry point native.py calls). */
void st_moments_struct(int nt, const st_moments_args *p) {
    const int64_t cfg[] = {[LRATE] = p->lrate, [LPHASE] = p->lphase, [HRATE] = p->hrate,
                           [HPHASE] = p->hphase, [KH] = p->kh, [KC] = p->kc, [BINS] = p->bins};
    st_moments_par(nt, p->x, p->n_img, p->C, p->L, p->sn, p->sc, p->sl, p->c0, p->c1, cfg,
                   p->out, p->hoff, p->low, p->cut, p->hist, p->coff, p->sub);
}

void st_sample_logs_par(int nt, const float *x, int64_t C, int64_t sc, const int64_t *off,
                        int64_t k, int64_t c0, int64_t c1, double *out) {
    SPLIT(st_sample_logs(x, C, sc, off, k, a, b, out));
}

/* One finite double: its exponent bits are not all ones (isfinite would be folded away by the
 * finite-math flags this file is compiled with). */
static inline int finite_bits(double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    return ((b >> 52) & 0x7FF) != 0x7FF;
}

/* Fold one batch's kernel output into a layer's float64 running totals (Chan et al.'s pairwise
 * update, the same formulas as running.py's _merge_into_), in one call instead of some thirty
 * torch operations per layer and batch. out: the 9 x C rows of st_moments (and
 * st_sample_logs); n_b: the batch's values per channel, n_a: the totals' count so far. tot: 8
 * pointers to C doubles: mean, m2, min, max, zeros, log count, log mean, log m2 (the last
 * three NULL without logs). Row 0 of out becomes the batch means. Returns 0 when a batch mean
 * is NaN or infinite (a NaN or Inf among the values). */
int st_merge(int64_t C, double n_b, double n_a, double *out, double *const *tot) {
    double *mean = tot[0], *m2 = tot[1], *mn = tot[2], *mx = tot[3], *zs = tot[4];
    double *lcn = tot[5], *lmu = tot[6], *lm2 = tot[7];
    const double n = n_a + n_b, wb = n_b / n, wab = n_a * n_b / n;
    int ok = 1;
    for (int64_t c = 0; c < C; c++) {
        const double s1 = out[C + c], s2 = out[2 * C + c];
        const double mb = out[c] + s1 / n_b;
        double q = s2 - s1 * s1 / n_b;
        q = q > 0 ? q : 0;
        ok &= finite_bits(mb);
        out[c] = mb;
        const double d = mb - mean[c];
        mean[c] += d * wb;
        m2[c] += q + d * d * wab;
        const double lo = out[3 * C + c], hi = out[4 * C + c];
        mn[c] = lo < mn[c] ? lo : mn[c];
        mx[c] = hi > mx[c] ? hi : mx[c];
        zs[c] += n_b - out[5 * C + c];
        if (lcn) {
            const double ka = lcn[c], kb = out[6 * C + c], k = ka + kb;
            const double safe = k > 1 ? k : 1;
            const double lb = out[7 * C + c] / (kb > 1 ? kb : 1);
            const double l2 = kb > 1 ? out[8 * C + c] : 0.0;
            const double dl = lb - lmu[c];
            lmu[c] += dl * (kb / safe);
            lm2[c] += l2 + dl * dl * (ka * kb / safe);
            lcn[c] = k;
        }
    }
    return ok;
}

/* The finished (C, C) float64 co-moment of a layer, in one pass instead of four: out = (a32 +
 * a64 - n delta delta^T) * scale, i.e. the float32 products not yet folded plus the float64
 * totals (a64 may be NULL), centred on the mean and scaled. Entries come from the upper
 * triangle (the product's blocks on and above the diagonal, see _gram_add_ in running.py) and
 * are mirrored below it, so the result is exactly symmetric. alpha = -n * scale. */
void st_cov_finish(int nt, int64_t C, const float *a32, const double *a64, const double *delta,
                   double alpha, double scale, double *out) {
    _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 16)")
    for (int64_t i = 0; i < C; i++) {
        const float *ar = a32 + i * C;
        const double *br = a64 ? a64 + i * C : NULL;
        double *o = out + i * C;
        const double di = delta[i] * alpha;
        if (br)
            for (int64_t j = i; j < C; j++) o[j] = ((double)ar[j] + br[j]) * scale + di * delta[j];
        else
            for (int64_t j = i; j < C; j++) o[j] = (double)ar[j] * scale + di * delta[j];
    }
    /* below the diagonal: the transpose, in tiles of 32 x 32 */
    _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 1)")
    for (int64_t t = 0; t < (C + 31) / 32; t++) {
        const int64_t i0 = t * 32, i1 = i0 + 32 < C ? i0 + 32 : C;
        for (int64_t j0 = 0; j0 < i1; j0 += 32)
            for (int64_t i = i0; i < i1; i++) {
                const int64_t lim = j0 + 32 < i ? j0 + 32 : i;
                for (int64_t j = j0; j < lim; j++) out[i * C + j] = out[j * C + i];
            }
    }
}
