/* Fused per-channel statistics of one batch of float32 activations (CPU).
 *
 * Every function reads a batch laid out as (N, C, L) with element (n, c, l) at
 *   x[n * sn + c * sc + l * sl]
 * in one of two layouts: channels in the middle (sc = L, sl = 1: contiguous NCHW outputs) or
 * channels last (sc = 1, sl = C: channels-last conv outputs, linear outputs, tokens). It works
 * on the channels [c0, c1), so that several threads can share a batch with no locks.
 *
 * moments: per channel, in one pass over every value: a shift k (the channel's first value),
 * the float64 sums of (x - k) and (x - k)^2 (the shifted-data variance: no cancellation when
 * the mean is far from zero), min, max and the number of non-zeros; with logs != 0 also the
 * number, sum and sum of squares of log|x| over the non-zero values.
 * sample_logs / sample_hist: the same log sums, or histogram counts, over a list of positions
 * (p = n * L + l).
 *
 * Compiled with finite-math flags (see native.py) so that min/max and the sums vectorise: no
 * comparison here may depend on NaN semantics. A NaN or infinite value still propagates into
 * the sums, which is how the caller detects it; the histogram tables mark "no edge in this
 * cell" with +inf, never NaN.
 *
 * log|x| is computed in float64 from the value's bits (exponent + an odd series for the
 * mantissa, absolute error < 1e-11), so that the loop vectorises; zeros are masked out.
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

/* out: 9 arrays of C doubles, one after the other: shift, s1, s2, min, max, nonzero,
 * log count, log sum, log sum of squares (the last three only with logs). */
void st_moments(const float *x, int64_t n_img, int64_t C, int64_t L, int64_t sn, int64_t sc,
                int64_t sl, int64_t c0, int64_t c1, int logs, double *out) {
    double *shift = out, *s1 = out + C, *s2 = out + 2 * C, *mn = out + 3 * C, *mx = out + 4 * C;
    double *nz = out + 5 * C, *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    if (sl == 1) { /* channels in the middle: every (n, c) is a contiguous run of L values */
        for (int64_t c = c0; c < c1; c++) {
            const float *xc = x + c * sc;
            const double k = (double)xc[0];
            double a1 = 0, a2 = 0, z = 0, g0 = 0, g1 = 0, g2 = 0;
            float lo = xc[0], hi = xc[0];
            for (int64_t n = 0; n < n_img; n++) {
                const float *r = xc + n * sn;
                for (int64_t l = 0; l < L; l++) {
                    float v = r[l];
                    double d = (double)v - k;
                    a1 += d;
                    a2 += d * d;
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                    double q = v != 0.0f ? 1.0 : 0.0;
                    z += q;
                    if (logs) {
                        double g = log_abs(v) * q;
                        g0 += q;
                        g1 += g;
                        g2 += g * g;
                    }
                }
            }
            shift[c] = k; s1[c] = a1; s2[c] = a2; mn[c] = lo; mx[c] = hi; nz[c] = z;
            if (logs) { lc[c] = g0; l1[c] = g1; l2[c] = g2; }
        }
        return;
    }
    /* channels last: each position is a contiguous run of the channels [c0, c1), reduced in
     * blocks of CB channels whose accumulators stay in L1 */
    for (int64_t b0 = c0; b0 < c1; b0 += CB) {
        const int64_t w = c1 - b0 < CB ? c1 - b0 : CB;
        double k[CB], a1[CB], a2[CB], z[CB], g0[CB], g1[CB], g2[CB];
        float lo[CB], hi[CB];
        for (int64_t j = 0; j < w; j++) {
            float v = x[(b0 + j) * sc];
            k[j] = (double)v; lo[j] = v; hi[j] = v;
            a1[j] = 0; a2[j] = 0; z[j] = 0; g0[j] = 0; g1[j] = 0; g2[j] = 0;
        }
        for (int64_t n = 0; n < n_img; n++) {
            for (int64_t l = 0; l < L; l++) {
                const float *restrict r = x + n * sn + l * sl + b0;
                if (logs) {
                    for (int64_t j = 0; j < w; j++) {
                        float v = r[j];
                        double d = (double)v - k[j];
                        a1[j] += d; a2[j] += d * d;
                        lo[j] = v < lo[j] ? v : lo[j];
                        hi[j] = v > hi[j] ? v : hi[j];
                        double q = v != 0.0f ? 1.0 : 0.0;
                        double g = log_abs(v) * q;
                        z[j] += q; g0[j] += q; g1[j] += g; g2[j] += g * g;
                    }
                } else {
                    for (int64_t j = 0; j < w; j++) {
                        float v = r[j];
                        double d = (double)v - k[j];
                        a1[j] += d; a2[j] += d * d;
                        lo[j] = v < lo[j] ? v : lo[j];
                        hi[j] = v > hi[j] ? v : hi[j];
                        z[j] += v != 0.0f ? 1.0 : 0.0;
                    }
                }
            }
        }
        for (int64_t j = 0; j < w; j++) {
            int64_t c = b0 + j;
            shift[c] = k[j]; s1[c] = a1[j]; s2[c] = a2[j]; mn[c] = lo[j]; mx[c] = hi[j];
            nz[c] = z[j];
            if (logs) { lc[c] = g0[j]; l1[c] = g1[j]; l2[c] = g2[j]; }
        }
    }
}

/* Log sums over the positions pos[0..k) (p = n * L + l); out as in st_moments (slots 6-8). */
void st_sample_logs(const float *x, int64_t C, int64_t L, int64_t sn, int64_t sc, int64_t sl,
                    const int64_t *pos, int64_t k, int64_t c0, int64_t c1, double *out) {
    double *lc = out + 6 * C, *l1 = out + 7 * C, *l2 = out + 8 * C;
    if (sl == 1) {
        for (int64_t c = c0; c < c1; c++) {
            const float *xc = x + c * sc;
            double g0 = 0, g1 = 0, g2 = 0;
            for (int64_t i = 0; i < k; i++) {
                int64_t p = pos[i];
                float v = xc[(p / L) * sn + (p % L)];
                double q = v != 0.0f ? 1.0 : 0.0;
                double g = log_abs(v) * q;
                g0 += q; g1 += g; g2 += g * g;
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
            int64_t p = pos[i];
            const float *restrict r = x + (p / L) * sn + (p % L) * sl + b0;
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

/* Histogram counts over the positions pos[0..k), added to hist (C rows of `bins` doubles).
 * The bin of v is low[h] + (v >= cut[h]) with h the upper 16 bits of v plus 32768 (see
 * _float32_bin_table in running.py). */
void st_sample_hist(const float *x, int64_t C, int64_t L, int64_t sn, int64_t sc, int64_t sl,
                    const int64_t *pos, int64_t k, int64_t c0, int64_t c1, const int32_t *low,
                    const float *cut, int64_t bins, double *hist) {
    for (int64_t i = 0; i < k; i++) {
        int64_t p = pos[i];
        const float *r = x + (p / L) * sn + (p % L) * sl;
        for (int64_t c = c0; c < c1; c++) {
            float v = r[c * sc];
            int32_t bits;
            memcpy(&bits, &v, 4);
            int32_t h = (bits >> 16) + 32768;
            int32_t b = low[h] + (v >= cut[h] ? 1 : 0);
            b = b < bins ? b : (int32_t)bins - 1; /* the +inf cell (cut +inf there) */
            hist[c * bins + b] += 1.0;
        }
    }
}
