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

/* One thread's rows for one iteration: q_i = n / max(sum_j g_ij^2 p_j, eps2); acc += g_i*^2 q_i.
 * Four rows at a time: one sweep over p serves four row sums, and the second sweep (the four rows are
 * now in L1/L2) updates the accumulator once for four rows, so p and acc move 4x less than g. */
#define SK_ROWS_BODY(T, LOAD)                                                                   \
    static void rows_##T(const T *g, int64_t lo, int64_t hi, int64_t n, int64_t ld, float eps2,   \
                         const float *p, float *q, float *acc) {                                 \
        const float fn = (float)n;                                                               \
        int64_t i = lo;                                                                          \
        for (; i + 4 <= hi; i += 4) {                                                            \
            const T *a = g + i * ld, *b = a + ld, *c = b + ld, *d = c + ld;                      \
            float sa = 0.0f, sb = 0.0f, sc = 0.0f, sd = 0.0f;                                    \
            _Pragma("omp simd reduction(+:sa,sb,sc,sd)")                                         \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float xa = LOAD(a[j]), xb = LOAD(b[j]), xc = LOAD(c[j]), xd = LOAD(d[j]);  \
                const float pj = p[j];                                                           \
                sa += xa * xa * pj;                                                              \
                sb += xb * xb * pj;                                                              \
                sc += xc * xc * pj;                                                              \
                sd += xd * xd * pj;                                                              \
            }                                                                                    \
            const float qa = fn / (sa > eps2 ? sa : eps2), qb = fn / (sb > eps2 ? sb : eps2);    \
            const float qc = fn / (sc > eps2 ? sc : eps2), qd = fn / (sd > eps2 ? sd : eps2);    \
            q[i] = qa; q[i + 1] = qb; q[i + 2] = qc; q[i + 3] = qd;                              \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float xa = LOAD(a[j]), xb = LOAD(b[j]), xc = LOAD(c[j]), xd = LOAD(d[j]);  \
                acc[j] += (xa * xa * qa + xb * xb * qb) + (xc * xc * qc + xd * xd * qd);         \
            }                                                                                    \
        }                                                                                        \
        for (; i < hi; ++i) {                                                                    \
            const T *row = g + i * ld;                                                           \
            float s = 0.0f;                                                                      \
            _Pragma("omp simd reduction(+:s)")                                                   \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float x = LOAD(row[j]);                                                    \
                s += x * x * p[j];                                                               \
            }                                                                                    \
            const float qi = fn / (s > eps2 ? s : eps2);                                         \
            q[i] = qi;                                                                           \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) {                                                    \
                const float x = LOAD(row[j]);                                                    \
                acc[j] += x * x * qi;                                                            \
            }                                                                                    \
        }                                                                                        \
    }

#define LOAD_F32(x) (x)
#define LOAD_BF16(x) bf16_to_f32(x)
typedef uint16_t bf16_t;
SK_ROWS_BODY(float, LOAD_F32)
SK_ROWS_BODY(bf16_t, LOAD_BF16)

/* Scales r [m], c [n] with SR-Sinkhorn(G) = diag(r) G diag(c) after `iters` row+column steps.
 * acc: nthreads * n fp32 scratch (per-thread column sums). r and c also serve as q and p (squared
 * scales) during the iteration and are square-rooted in place at the end. */
void sk_scales(const void *g, int dtype, int64_t m, int64_t n, int64_t ld, int iters, float eps2,
               float *r, float *c, float *acc, int nthreads) {
    const int team = team_size(nthreads);
    for (int64_t j = 0; j < n; ++j) c[j] = 1.0f;
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
            if (dtype == SK_BF16) rows_bf16_t((const bf16_t *)g, lo, hi, n, ld, eps2, c, r, mine);
            else rows_float((const float *)g, lo, hi, n, ld, eps2, c, r, mine);
#pragma omp barrier
            /* Column step: every thread reduces its own slice of columns over all accumulators. */
            for (int64_t j = jlo; j < jhi; ++j) {
                float v = 0.0f;
                for (int u = 0; u < size; ++u) v += acc[(int64_t)u * n + j];
                c[j] = (float)m / (v > eps2 ? v : eps2);
            }
#pragma omp barrier
        }
        for (int64_t i = lo; i < hi; ++i) r[i] = sqrtf(r[i]);
        for (int64_t j = jlo; j < jhi; ++j) c[j] = sqrtf(c[j]);
    }
}

/* out = diag(r) G diag(c), fp32, out row stride ldo. Same product order as the torch path: (g c) r. */
#define SK_APPLY_BODY(T, LOAD)                                                                   \
    static void apply_##T(const T *g, int64_t m, int64_t n, int64_t ld, const float *r,           \
                          const float *c, float *out, int64_t ldo, int team) {                   \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                           \
        for (int64_t i = 0; i < m; ++i) {                                                        \
            const T *row = g + i * ld;                                                           \
            float *o = out + i * ldo;                                                            \
            const float ri = r[i];                                                               \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) o[j] = (LOAD(row[j]) * c[j]) * ri;                    \
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
            const float si = step * r[i];                                                        \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) wi[j] = STORE(LOAD(wi[j]) + si * (LOAD(row[j]) * c[j])); \
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
 * the fused g * inv + (-mean * inv) would leave the rounding error of mean * inv, O(1) when inv = 1/eps. */
#define GN_BODY(T, LOAD)                                                                         \
    static void grad_norm_##T(const T *g, int64_t m, int64_t n, int64_t ld, float eps2, float *out, \
                              int64_t ldo, int team) {                                          \
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
            const float inv = 1.0f / sqrtf(v > eps2 ? v : eps2);                                 \
            _Pragma("omp simd")                                                                  \
            for (int64_t j = 0; j < n; ++j) o[j] = (LOAD(row[j]) - mean) * inv;                  \
        }                                                                                        \
    }
GN_BODY(float, LOAD_F32)
GN_BODY(bf16_t, LOAD_BF16)

void gn_rows(const void *g, int dtype, int64_t m, int64_t n, int64_t ld, float eps2, float *out, int64_t ldo,
             int nthreads) {
    const int team = team_size(nthreads);
    if (dtype == SK_BF16) grad_norm_bf16_t((const bf16_t *)g, m, n, ld, eps2, out, ldo, team);
    else grad_norm_float((const float *)g, m, n, ld, eps2, out, ldo, team);
}

/* Lets the loader check that it opened the library built from this source revision. */
int sk_abi_version(void) { return 2; }
