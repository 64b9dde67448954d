/* Memory-bound gradient preprocessing kernels for CPUs: SR-Sinkhorn (the scale iteration, the scaled copy
 * and the fused SinkGD update) and GradNorm (row standardisation).
 *
 * Built on first use by optimizers/native.py with the system C compiler (-O3 -march=native -fopenmp) and
 * called through ctypes; every buffer (including the per-thread column accumulators) is allocated by the
 * caller as a torch tensor, so torch's memory profiler sees all of it.
 *
 * Why C: the iteration is memory-bound. With X = diag(sqrt q) G diag(sqrt p) and S = G*G (elementwise),
 * one Sinkhorn iteration is q = n / (S p) (rows) then p = m / (S^T q) (columns). Row i of q needs only
 * row i of G, so each thread walks its own rows once per iteration: the first sweep of a row computes
 * q_i from DRAM/L3, the second sweep (row still in L1) adds S_i* q_i into the thread's private column
 * accumulator. G is read once per iteration and never written; torch's per-op dispatch and OpenMP
 * fork/join per row block (what the pure-torch blocked kernel pays ~1000 times per call) happen once.
 *
 * Layout: G is m x n with row stride ld (elements) and unit column stride. Element types: float32 and
 * bfloat16 (widened to fp32 on load; all arithmetic is fp32). Outputs are fp32, except the update, which
 * writes the parameter in its own type (bfloat16 rounded to nearest even, as torch does).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SK_F32 0
#define SK_BF16 1

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                              /* nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline int team_size(int nthreads) { return nthreads > 0 ? nthreads : 1; }

static inline void thread_slice(int64_t total, int t, int team, int64_t *lo, int64_t *hi) {
    *lo = total * t / team;
    *hi = total * (t + 1) / team;
}

/* SR-Sinkhorn works on the literal iterate X = diag(r) G diag(c) (r, c the scales so far, fp32): the row
 * step scales row i by sqrt(n) / max(||x_i||, eps) and the column step column j by sqrt(m) / max(||x_j||, eps),
 * with the floor on the CURRENT iterate's norms, as the algorithm is written. (An earlier version iterated
 * the squared scales q = n / (S p) with S = G*G and floored S p instead: a row whose norm in G diag(c) was
 * below eps was then never normalised, at any L.)
 *
 * Range: entries are formed as x = (g r) c. After the first row step every entry of X is bounded by
 * max(sqrt(n), sqrt(m)) (each half-step leaves rows or columns of norm <= sqrt(n) or sqrt(m)), so the fp32
 * sums of squares cannot overflow; only the first row step sees the raw gradient (any finite fp32 value).
 * A row whose fp32 sum of squares leaves [2^-100, 2^100] (beyond ~1e19 entries, tiny or zero rows) is
 * summed again in double, which holds the square of every finite fp32 number: its norm is then exact in
 * every case. Column sums of squares below ~1e-38 (columns of norm below ~1e-19) lose precision in fp32;
 * with eps >= 1e-15 such columns are floored either way.
 *
 * A scale is clamped at FLT_MAX: an all-zero row or column is multiplied by sqrt(n)/eps every iteration
 * (as the literal algorithm does, which changes nothing in X), and an unclamped scale would reach inf,
 * and inf * 0 = NaN. (A column sum of squares that underflowed to 0 is not a zero column: the floor must
 * still scale it up, so "norm 0" cannot be special-cased.) */
#define SK_SAFE_LO 0x1p-100f
#define SK_SAFE_HI 0x1p100f

static inline float sk_new_scale(float s, double norm, double target, double eps) {
    const double v = (double)s * target / (norm > eps ? norm : eps);
    return v < (double)FLT_MAX ? (float)v : FLT_MAX;
}

/* One thread's rows for one iteration: the row step (r updated in place) and the column sums of squares
 * of the row-stepped rows into the thread's accumulator. Four rows at a time: one sweep over c serves four
 * row sums, and the second sweep (the four rows are now in L1/L2) updates the accumulator once for four
 * rows, so c and acc move 4x less than g. */
#define SK_ROWS_BODY(T, LOAD)                                                                   \
    static double slow_norm_##T(const T *row, int64_t n, float ri, const float *c) {            \
        double s = 0.0;                                                                          \
        for (int64_t j = 0; j < n; ++j) {                                                        \
            const double x = (double)LOAD(row[j]) * (double)ri * (double)c[j];                   \
            s += x * x;                                                                          \
        }                                                                                        \
        return sqrt(s);                                                                          \
    }                                                                                            \
    static inline double row_norm_##T(const T *row, int64_t n, float ri, const float *c, float s) { \
        return (s >= SK_SAFE_LO && s <= SK_SAFE_HI) ? sqrt((double)s) : slow_norm_##T(row, n, ri, c); \
    }                                                                                            \
    static void rows_##T(const T *g, int64_t lo, int64_t hi, int64_t n, int64_t ld, double eps,   \
                         const float *c, float *r, float *acc) {                                 \
        const double tn = sqrt((double)n);                                                       \
        int64_t i = lo;                                                                          \
        for (; i + 4 <= hi; i += 4) {                                                            \
            const T *a = g + i * ld, *b = a + ld, *cc = b + ld, *d = cc + ld;                    \
            const float ra = r[i], rb = r[i + 1], rc = r[i + 2], rd = r[i + 3];                   \
            float sa = 0.0f, sb = 0.0f, sc = 0.0f, sd = 0.0f;                                    \
            _Pragma("omp simd reduction(+:sa,sb,sc,sd)")                                         \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float cj = c[j];                                                           \
                const float xa = (LOAD(a[j]) * ra) * cj, xb = (LOAD(b[j]) * rb) * cj;             \
                const float xc = (LOAD(cc[j]) * rc) * cj, xd = (LOAD(d[j]) * rd) * cj;            \
                sa += xa * xa;                                                                   \
                sb += xb * xb;                                                                   \
                sc += xc * xc;                                                                   \
                sd += xd * xd;                                                                   \
            }                                                                                    \
            const float na = sk_new_scale(ra, row_norm_##T(a, n, ra, c, sa), tn, eps);           \
            const float nb = sk_new_scale(rb, row_norm_##T(b, n, rb, c, sb), tn, eps);           \
            const float nc = sk_new_scale(rc, row_norm_##T(cc, n, rc, c, sc), tn, eps);          \
            const float nd = sk_new_scale(rd, row_norm_##T(d, n, rd, c, sd), tn, eps);           \
            r[i] = na; r[i + 1] = nb; r[i + 2] = nc; r[i + 3] = nd;                              \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float cj = c[j];                                                           \
                const float xa = (LOAD(a[j]) * na) * cj, xb = (LOAD(b[j]) * nb) * cj;             \
                const float xc = (LOAD(cc[j]) * nc) * cj, xd = (LOAD(d[j]) * nd) * cj;            \
                acc[j] += (xa * xa + xb * xb) + (xc * xc + xd * xd);                             \
            }                                                                                    \
        }                                                                                        \
        for (; i < hi; ++i) {                                                                    \
            const T *row = g + i * ld;                                                           \
            const float ri = r[i];                                                               \
            float s = 0.0f;                                                                      \
            _Pragma("omp simd reduction(+:s)")                                                   \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float x = (LOAD(row[j]) * ri) * c[j];                                      \
                s += x * x;                                                                      \
            }                                                                                    \
            const float ni = sk_new_scale(ri, row_norm_##T(row, n, ri, c, s), tn, eps);          \
            r[i] = ni;                                                                           \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float x = (LOAD(row[j]) * ni) * c[j];                                      \
                acc[j] += x * x;                                                                 \
            }                                                                                    \
        }                                                                                        \
    }

#define LOAD_F32(x) (x)
#define LOAD_BF16(x) bf16_to_f32(x)
typedef uint16_t bf16_t;
SK_ROWS_BODY(float, LOAD_F32)
SK_ROWS_BODY(bf16_t, LOAD_BF16)

/* Scales r [m], c [n] with SR-Sinkhorn(G) = diag(r) G diag(c) after `iters` row+column steps, floors
 * `eps` on the iterate's norms. acc: nthreads * n fp32 scratch (per-thread column sums of squares). */
void sk_scales(const void *g, int dtype, int64_t m, int64_t n, int64_t ld, int iters, double eps,
               float *r, float *c, float *acc, int nthreads) {
    const int team = team_size(nthreads);
    const double tm = sqrt((double)m);
    for (int64_t j = 0; j < n; ++j) c[j] = 1.0f;
    for (int64_t i = 0; i < m; ++i) r[i] = 1.0f;
#pragma omp parallel num_threads(team)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), size = omp_get_num_threads();
#else
        const int t = 0, size = 1;
#endif
        int64_t lo, hi, jlo, jhi;
        thread_slice(m, t, size, &lo, &hi);
        thread_slice(n, t, size, &jlo, &jhi);
        float *mine = acc + (int64_t)t * n;
        for (int it = 0; it < iters; ++it) {
            memset(mine, 0, (size_t)n * sizeof(float));
            if (dtype == SK_BF16) rows_bf16_t((const bf16_t *)g, lo, hi, n, ld, eps, c, r, mine);
            else rows_float((const float *)g, lo, hi, n, ld, eps, c, r, mine);
#pragma omp barrier
            /* Column step: every thread reduces its own slice of columns over all accumulators. */
            for (int64_t j = jlo; j < jhi; ++j) {
                double v = 0.0;
                for (int u = 0; u < size; ++u) v += acc[(int64_t)u * n + j];
                c[j] = sk_new_scale(c[j], sqrt(v), tm, eps);
            }
#pragma omp barrier
        }
    }
}

/* out = diag(r) G diag(c), fp32, out row stride ldo. Same product order as the torch path and the
 * iteration: (g r) c, which stays in range for any finite g (g r is a row-normalised entry). */
#define SK_APPLY_BODY(T, LOAD)                                                                   \
    static void apply_##T(const T *g, int64_t m, int64_t n, int64_t ld, const float *r,           \
                          const float *c, float *out, int64_t ldo, int team) {                   \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                           \
        for (int64_t i = 0; i < m; ++i) {                                                        \
            const T *row = g + i * ld;                                                           \
            float *o = out + i * ldo;                                                            \
            const float ri = r[i];                                                               \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) o[j] = (LOAD(row[j]) * ri) * c[j];                    \
        }                                                                                        \
    }
SK_APPLY_BODY(float, LOAD_F32)
SK_APPLY_BODY(bf16_t, LOAD_BF16)

void sk_apply(const void *g, int dtype, int64_t m, int64_t n, int64_t ld, const float *r, const float *c,
              float *out, int64_t ldo, int nthreads) {
    const int team = team_size(nthreads);
    if (dtype == SK_BF16) apply_bf16_t((const bf16_t *)g, m, n, ld, r, c, out, ldo, team);
    else apply_float((const float *)g, m, n, ld, r, c, out, ldo, team);
}

/* The fused SinkGD update: w += step * diag(r) G diag(c), w and G of the same element type; the sum is
 * formed in fp32 and stored once (bf16: rounded to nearest even, as torch's addcmul_ on bf16 does). */
#define STORE_F32(x) (x)
#define STORE_BF16(x) f32_to_bf16(x)
#define SK_UPDATE_BODY(T, LOAD, STORE)                                                          \
    static void update_##T(T *w, int64_t ldw, const T *g, int64_t ld, int64_t m, int64_t n,       \
                           const float *r, const float *c, float step, int team) {               \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                           \
        for (int64_t i = 0; i < m; ++i) {                                                        \
            const T *row = g + i * ld;                                                           \
            T *wi = w + i * ldw;                                                                 \
            const float ri = r[i];                                                               \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) wi[j] = STORE(LOAD(wi[j]) + step * ((LOAD(row[j]) * ri) * c[j])); \
        }                                                                                        \
    }
SK_UPDATE_BODY(float, LOAD_F32, STORE_F32)
SK_UPDATE_BODY(bf16_t, LOAD_BF16, STORE_BF16)

void sk_update(void *w, int64_t ldw, const void *g, int64_t ld, int dtype, int64_t m, int64_t n,
               const float *r, const float *c, float step, int nthreads) {
    const int team = team_size(nthreads);
    if (dtype == SK_BF16) update_bf16_t((bf16_t *)w, ldw, (const bf16_t *)g, ld, m, n, r, c, step, team);
    else update_float((float *)w, ldw, (const float *)g, ld, m, n, r, c, step, team);
}

/* GradNorm: out_i* = (g_i* - mean_i) / max(std_i, eps) with the population std. Three sweeps over each
 * row, but only the first comes from memory: the row (n <= 16k fp32 in every LLaMA preset) stays in
 * L1/L2 for the centred second moment (two-pass: no cancellation, unlike E[x^2] - mean^2) and for the
 * write. Subtract, then scale (as the torch path): a constant row, whose std is below eps, is exactly 0;
 * the fused g * inv + (-mean * inv) would leave the rounding error of mean * inv, O(1) when inv = 1/eps.
 *
 * Range: the fp32 sums overflow for entries beyond ~1e18 (squares) or ~1e38 / n (the sum), and entries
 * near the denormal range lose the mean's precision. A row whose fp32 mean or variance is not finite, or
 * whose variance is below 2^-100 (std below ~1e-15: tiny, constant or zero rows), is recomputed in double,
 * which holds every such sum exactly enough: any finite row is standardised as in exact arithmetic. */
#define GN_BODY(T, LOAD)                                                                         \
    static void grad_norm_slow_##T(const T *row, int64_t n, double eps, float *o) {              \
        double s = 0.0;                                                                          \
        for (int64_t j = 0; j < n; ++j) s += (double)LOAD(row[j]);                               \
        const double mean = s / (double)n;                                                       \
        double v = 0.0;                                                                          \
        for (int64_t j = 0; j < n; ++j) {                                                        \
            const double d = (double)LOAD(row[j]) - mean;                                        \
            v += d * d;                                                                          \
        }                                                                                        \
        const double sd = sqrt(v / (double)n);                                                   \
        const double inv = 1.0 / (sd > eps ? sd : eps);                                          \
        for (int64_t j = 0; j < n; ++j) o[j] = (float)(((double)LOAD(row[j]) - mean) * inv);    \
    }                                                                                            \
    static void grad_norm_##T(const T *g, int64_t m, int64_t n, int64_t ld, double eps, float *out, \
                              int64_t ldo, int team) {                                          \
        const float eps2 = (float)(eps * eps);                                                   \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                           \
        for (int64_t i = 0; i < m; ++i) {                                                        \
            const T *row = g + i * ld;                                                           \
            float *o = out + i * ldo;                                                            \
            float s = 0.0f;                                                                      \
            _Pragma("omp simd reduction(+:s)")                                                   \
            for (int64_t j = 0; j < n; ++j) s += LOAD(row[j]);                                   \
            float mean = s / (float)n;                                                           \
            /* Corrected two-pass: the residuals' own mean c removes the fp32 rounding of the first \
             * mean (a constant row then has mean == its value and maps to exact zeros). */       \
            float v = 0.0f, e = 0.0f;                                                            \
            _Pragma("omp simd reduction(+:v, e)")                                                \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float d = LOAD(row[j]) - mean;                                             \
                v += d * d;                                                                      \
                e += d;                                                                          \
            }                                                                                    \
            const float c = e / (float)n;                                                        \
            mean += c;                                                                           \
            v = v / (float)n - c * c;                                                            \
            if (!(isfinite(mean) && v >= 0x1p-100f && v <= FLT_MAX)) {                           \
                grad_norm_slow_##T(row, n, eps, o);                                              \
                continue;                                                                        \
            }                                                                                    \
            const float inv = 1.0f / sqrtf(v > eps2 ? v : eps2);                                 \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) o[j] = (LOAD(row[j]) - mean) * inv;                  \
        }                                                                                        \
    }
GN_BODY(float, LOAD_F32)
GN_BODY(bf16_t, LOAD_BF16)

void gn_rows(const void *g, int dtype, int64_t m, int64_t n, int64_t ld, double eps, float *out, int64_t ldo,
             int nthreads) {
    const int team = team_size(nthreads);
    if (dtype == SK_BF16) grad_norm_bf16_t((const bf16_t *)g, m, n, ld, eps, out, ldo, team);
    else grad_norm_float((const float *)g, m, n, ld, eps, out, ldo, team);
}

/* Lets the loader check that it opened the library built from this source revision. */
int sk_abi_version(void) { return 3; }
