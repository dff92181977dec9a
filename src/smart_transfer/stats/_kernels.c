/* Fused per-channel statistics of one batch of float32 activations (CPU).
 *
 * Every function reads a batch laid out as (N, C, L) with element (n, c, l) at
 *   x[n * sn + c * sc + l * sl]
 * in one of two layouts: channels in the middle (sc = L, sl = 1: contiguous NCHW outputs) or
 * channels last (sc = 1, sl = C: channels-last conv outputs, linear outputs, tokens). It works
 * on the channels [c0, c1), so that several threads can share a batch with no locks.
 *
 * moments: per channel, in one pass over every value: a shift k (the channel's first value),
 * the sums of (x - k) and (x - k)^2 (the shifted-data variance: no cancellation when the mean
 * is far from zero), min, max and the number of non-zeros; with logs != 0 also the sum and sum
 * of squares of log|x| over the non-zero values. Channel rows are summed in float32 vector
 * lanes over blocks of at most BLK values, then in float64; channel vectors in float64.
 * sample_logs / sample_hist: the same log sums, or histogram counts, over positions given by
 * their element offsets (of channel 0).
 *
 * Compiled with finite-math flags (see native.py) so that min/max and the sums vectorise: no
 * comparison here may depend on NaN semantics. A NaN or infinite value still propagates into
 * the sums, which is how the caller detects it; the histogram tables mark "no edge in this
 * cell" with +inf, never NaN.
 *
 * log|x|: in float32 vector lanes where values come 8 at a time (vlog_abs), else in float64
 * (log_abs); both from the value's bits (exponent + an odd series for the mantissa), so that
 * the loops vectorise; zeros are masked out.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define LN2 0.6931471805599453
#define SQRT2 1.4142135623730951
#define CB 256

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

/* Moments of one contiguous row of L values about the shift k, written with the compiler's
 * vector extensions (8 floats a vector, two vectors an iteration) so that it runs at the vector
 * units' width whatever the auto-vectoriser makes of it: float32 lanes over blocks of at most
 * BLK values, each block's sums then added in float64 (a lane sums at most BLK / 16 values). */
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
#define BLK 1024

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf vmin(vf a, vf b) { vi m = a < b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline float hsum(vf a) { float s = 0; for (int j = 0; j < 8; j++) s += a[j]; return s; }

static void row_moments(const float *restrict r, int64_t L, float kf, double *a1, double *a2,
                        float *lo, float *hi, double *z) {
    const vf k = {kf, kf, kf, kf, kf, kf, kf, kf};
    const vf one = {1, 1, 1, 1, 1, 1, 1, 1};
    const vf zero = {0};
    vf lo0 = k, lo1 = k, hi0 = k, hi1 = k; /* kf is a value of the channel */
    int64_t l = 0;
    while (L - l >= 16) {
        int64_t end = l + ((L - l > BLK ? BLK : L - l) / 16) * 16;
        vf s0 = zero, s1 = zero, q0 = zero, q1 = zero, z0 = zero, z1 = zero;
        for (; l < end; l += 16) {
            vf v0 = vload(r + l), v1 = vload(r + l + 8);
            vf d0 = v0 - k, d1 = v1 - k;
            s0 += d0; s1 += d1;
            q0 += d0 * d0; q1 += d1 * d1;
            lo0 = vmin(v0, lo0); lo1 = vmin(v1, lo1);
            hi0 = vmax(v0, hi0); hi1 = vmax(v1, hi1);
            z0 += (vf)((vi)one & (v0 != zero)); z1 += (vf)((vi)one & (v1 != zero));
        }
        *a1 += (double)hsum(s0) + (double)hsum(s1);
        *a2 += (double)hsum(q0) + (double)hsum(q1);
        *z += (double)hsum(z0) + (double)hsum(z1);
    }
    float fl = *lo, fh = *hi;
    for (int j = 0; j < 8; j++) {
        fl = lo0[j] < fl ? lo0[j] : fl; fl = lo1[j] < fl ? lo1[j] : fl;
        fh = hi0[j] > fh ? hi0[j] : fh; fh = hi1[j] > fh ? hi1[j] : fh;
    }
    for (; l < L; l++) {
        float v = r[l];
        double d = (double)v - (double)kf;
        *a1 += d; *a2 += d * d;
        fl = v < fl ? v : fl;
        fh = v > fh ? v : fh;
        *z += v != 0.0f ? 1.0 : 0.0;
    }
    *lo = fl; *hi = fh;
}

/* log|v| of 8 floats in float32 (relative error ~1e-7, as torch's float32 log), for v != 0:
 * exponent + an odd series in s = (m - 1) / (m + 1) for the mantissa m in [sqrt(1/2), sqrt(2));
 * subnormals are scaled by 2^23 first. Lanes where v == 0 give a finite value the caller masks. */
static inline vf vlog_abs(vf v) {
    const vi absmask = {0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF,
                        0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF};
    vi b = (vi)v & absmask;
    vi sub = b < 0x00800000;                      /* subnormal (or zero) lanes */
    vf scaled = (vf)b * 8388608.0f;               /* exact for subnormals */
    b = (b & ~sub) | ((vi)scaled & sub);
    const vf zero = {0};
    vf e = __builtin_convertvector((b >> 23) - 127, vf) - (vf)(sub & (vi)(zero + 23.0f));
    vf m = (vf)((b & 0x007FFFFF) | 0x3F800000);   /* [1, 2) */
    vi big = m > 1.41421356f;
    m = (vf)(((vi)(m * 0.5f) & big) | ((vi)m & ~big));
    e = e + (vf)((vi)(zero + 1.0f) & big);
    vf s = (m - 1.0f) / (m + 1.0f);               /* |s| <= 0.1716 */
    vf s2 = s * s;
    vf q = zero + 2.0f / 9.0f;
    q = q * s2 + 2.0f / 7.0f;
    q = q * s2 + 2.0f / 5.0f;
    q = q * s2 + 2.0f / 3.0f;
    q = q * s2 + 2.0f;
    return e * 0.693147180559945f + s * q;
}

/* Sum and sum of squares of log|x| over the non-zero values of one contiguous row (their count
 * is the row's non-zero count): float32 lanes over blocks of at most BLK values, float64 across
 * blocks. */
static void row_logs(const float *restrict r, int64_t L, double *g1, double *g2) {
    const vf zero = {0};
    int64_t l = 0;
    while (L - l >= 8) {
        int64_t end = l + ((L - l > BLK ? BLK : L - l) / 8) * 8;
        vf c1 = zero, c2 = zero;
        for (; l < end; l += 8) {
            vf v = vload(r + l);
            vf g = (vf)((vi)vlog_abs(v) & (v != zero));
            c1 += g;
            c2 += g * g;
        }
        *g1 += hsum(c1); *g2 += hsum(c2);
    }
    for (; l < L; l++) {
        float v = r[l];
        if (v != 0.0f) {
            double g = log_abs(v);
            *g1 += g; *g2 += g * g;
        }
    }
}

/* out: 9 arrays of C doubles, one after the other: shift, s1, s2, min, max, nonzero,
 * log count, log sum, log sum of squares (the last three only with logs). */
void st_moments(const float *x, int64_t n_img, int64_t C, int64_t L, int64_t sn, int64_t sc,
                int64_t sl, int64_t c0, int64_t c1, int logs, double *out) {
    double *shift = out, *s1 = out + C, *s2 = out + 2 * C, *mn = out + 3 * C, *mx = out + 4 * C;
    double *nz = out + 5 * C, *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    if (sl == 1) { /* channels in the middle: every (n, c) is a contiguous run of L values */
        for (int64_t c = c0; c < c1; c++) {
            const float *xc = x + c * sc;
            double a1 = 0, a2 = 0, z = 0, g1 = 0, g2 = 0;
            float lo = xc[0], hi = xc[0];
            for (int64_t n = 0; n < n_img; n++) {
                const float *r = xc + n * sn;
                row_moments(r, L, xc[0], &a1, &a2, &lo, &hi, &z);
                if (logs) row_logs(r, L, &g1, &g2);
            }
            shift[c] = (double)xc[0]; s1[c] = a1; s2[c] = a2; mn[c] = lo; mx[c] = hi; nz[c] = z;
            if (logs) { lc[c] = z; l1[c] = g1; l2[c] = g2; }
        }
        return;
    }
    /* channels last: each position is a contiguous run of the channels [c0, c1), reduced in
     * blocks of CB channels whose accumulators stay in L1; the logs in a second loop over the
     * same run, while it is in L1 */
    for (int64_t b0 = c0; b0 < c1; b0 += CB) {
        const int64_t w = c1 - b0 < CB ? c1 - b0 : CB;
        double k[CB], a1[CB], a2[CB], z[CB], g1[CB], g2[CB];
        float lo[CB], hi[CB];
        for (int64_t j = 0; j < w; j++) {
            float v = x[(b0 + j) * sc];
            k[j] = (double)v; lo[j] = v; hi[j] = v;
            a1[j] = 0; a2[j] = 0; z[j] = 0; g1[j] = 0; g2[j] = 0;
        }
        for (int64_t n = 0; n < n_img; n++) {
            for (int64_t l = 0; l < L; l++) {
                const float *restrict r = x + n * sn + l * sl + b0;
                for (int64_t j = 0; j < w; j++) {
                    float v = r[j];
                    double d = (double)v - k[j];
                    a1[j] += d; a2[j] += d * d;
                    lo[j] = v < lo[j] ? v : lo[j];
                    hi[j] = v > hi[j] ? v : hi[j];
                    z[j] += v != 0.0f ? 1.0 : 0.0;
                }
                if (logs) {
                    for (int64_t j = 0; j < w; j++) {
                        float v = r[j];
                        double g = v != 0.0f ? log_abs(v) : 0.0;
                        g1[j] += g; g2[j] += g * g;
                    }
                }
            }
        }
        for (int64_t j = 0; j < w; j++) {
            int64_t c = b0 + j;
            shift[c] = k[j]; s1[c] = a1[j]; s2[c] = a2[j]; mn[c] = lo[j]; mx[c] = hi[j];
            nz[c] = z[j];
            if (logs) { lc[c] = z[j]; l1[c] = g1[j]; l2[c] = g2[j]; }
        }
    }
}

/* Log sums over k positions given by their element offsets off[i] (of channel 0; channel c
 * is at off[i] + c * sc); out as in st_moments (slots 6-8). */
void st_sample_logs(const float *x, int64_t C, int64_t sc, const int64_t *off, int64_t k,
                    int64_t c0, int64_t c1, double *out) {
    double *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    if (sc != 1) { /* channel rows: gather 8 positions into a vector, float32 logs */
        const vf zero = {0};
        const vf one = {1, 1, 1, 1, 1, 1, 1, 1};
        for (int64_t c = c0; c < c1; c++) {
            const float *xc = x + c * sc;
            double g0 = 0, g1 = 0, g2 = 0;
            int64_t i = 0;
            while (k - i >= 8) {
                int64_t end = i + ((k - i > BLK ? BLK : k - i) / 8) * 8;
                vf a0 = zero, a1 = zero, a2 = zero;
                for (; i < end; i += 8) {
                    vf v = {xc[off[i]], xc[off[i + 1]], xc[off[i + 2]], xc[off[i + 3]],
                            xc[off[i + 4]], xc[off[i + 5]], xc[off[i + 6]], xc[off[i + 7]]};
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
            lc[c] = g0; l1[c] = g1; l2[c] = g2;
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
        for (int64_t j = 0; j < w; j++) { lc[b0 + j] = g0[j]; l1[b0 + j] = g1[j]; l2[b0 + j] = g2[j]; }
    }
}

/* Histogram counts over k positions (element offsets as in st_sample_logs), added to hist
 * (C rows of `bins` doubles). The bin of v is low[h] + (v >= cut[h]) with h the upper 16 bits
 * of v plus 32768 (see _float32_bin_table in running.py). */
void st_sample_hist(const float *x, int64_t C, int64_t sc, const int64_t *off, int64_t k,
                    int64_t c0, int64_t c1, const int32_t *low, const float *cut, int64_t bins,
                    double *hist) {
    (void)C;
    for (int64_t c = c0; c < c1; c++) {
        const float *xc = x + c * sc;
        double *hc = hist + c * bins;
        for (int64_t i = 0; i < k; i++) {
            float v = xc[off[i]];
            int32_t bits;
            memcpy(&bits, &v, 4);
            int32_t h = (bits >> 16) + 32768;
            int32_t b = low[h] + (v >= cut[h] ? 1 : 0);
            b = b < bins ? b : (int32_t)bins - 1; /* the +inf cell (cut +inf there) */
            hc[b] += 1.0;
        }
    }
}
