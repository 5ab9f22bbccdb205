/* Softmax of one float32 vector in three and in two passes over memory (Dukhan & Ablavatski 2020),
 * written for this project with AVX512F and with AVX2+FMA intrinsics, one function per algorithm and
 * instruction set, plus a memory copy (the bandwidth roofline) and a timing loop over rotating buffers.
 * Built by softrepro.methods.kernels.two_pass (cc -O2 -shared), called through ctypes.
 *
 * exp(x) = p(t) * 2^n with n = round(x log2 e) and t = x - n ln 2 (Cody-Waite split of ln 2), where p is
 * a degree-5 polynomial fitted to exp on [-ln2/2, ln2/2] (relative error 2.3e-7 in float32; the
 * coefficients come from a weighted least-squares fit at Chebyshev nodes; the tests check the bound).
 * Terms below 2^-100 (relative to the largest) are set to 0 rather than computed: a denormal result
 * costs a microcode assist of ~100 cycles on Intel cores, which would time the assist, not the algorithm.
 *
 *   three_pass_recompute: max | sum exp(x - max) | y = exp(x - max) / sum      reads x 3 times, writes y once
 *   three_pass_reload:    max | y = exp(x - max), sum | y *= 1 / sum           reads x twice, y once, writes y twice
 *   two_pass:             (M, N) = sum of p_i 2^(n_i - N), N the largest n_i  | y = p_i / M * 2^(n_i - N)
 *                         reads x twice, writes y once; no max pass: the exponent is carried beside the sum.
 */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define LOG2E 1.44269504f
#define LN2_HI 0.693145752f
#define LN2_LO 1.42860677e-6f
#define C0 1.00000012f
#define C1 0.999999642f
#define C2 0.499989003f
#define C3 0.166676611f
#define C4 0.0419150367f
#define C5 0.00829187222f

/* ---------- scalar pieces (vector tails) ---------- */

static inline float poly_s(float t) {
    return C0 + t * (C1 + t * (C2 + t * (C3 + t * (C4 + t * C5))));
}

static inline void split_s(float x, float *p, float *n) {
    float k = nearbyintf(x * LOG2E);
    float t = fmaf(k, -LN2_HI, x);
    t = fmaf(k, -LN2_LO, t);
    *p = poly_s(t);
    *n = k;
}

static inline float exp_s(float x) {
    float p, n;
    split_s(x, &p, &n);
    return n < -100.0f ? 0.0f : ldexpf(p, (int)n);
}

/* ---------- AVX512F ---------- */

#define A512 __attribute__((target("avx512f")))

A512 static inline __m512 poly_512(__m512 t) {
    __m512 p = _mm512_set1_ps(C5);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(C4));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(C3));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(C2));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(C1));
    return _mm512_fmadd_ps(p, t, _mm512_set1_ps(C0));
}

A512 static inline __m512 split_512(__m512 x, __m512 *n) {
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 t = _mm512_fmadd_ps(k, _mm512_set1_ps(-LN2_HI), x);
    t = _mm512_fmadd_ps(k, _mm512_set1_ps(-LN2_LO), t);
    *n = k;
    return poly_512(t);
}

#define CUTOFF -100.0f /* exponents below this give 0 (see above) */

/* p * 2^d for integral d <= 0, 0 where d < CUTOFF */
A512 static inline __m512 scale_512(__m512 p, __m512 d) {
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(d, _mm512_set1_ps(CUTOFF), _CMP_GE_OQ), p, d);
}

A512 static inline __m512 exp_512(__m512 x) { /* x <= 0 here (inputs minus their maximum) */
    __m512 n;
    __m512 p = split_512(x, &n);
    return scale_512(p, n);
}

A512 static float max_512(const float *x, size_t n) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
        m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + i + 32));
        m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + i + 48));
    }
    for (; i + 16 <= n; i += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

A512 void three_pass_recompute_avx512(const float *x, float *y, size_t n) {
    const float mx = max_512(x, n);
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_add_ps(s0, exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
        s1 = _mm512_add_ps(s1, exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm)));
        s2 = _mm512_add_ps(s2, exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), vm)));
        s3 = _mm512_add_ps(s3, exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), vm)));
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_add_ps(s0, exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) s += exp_s(x[i] - mx);
    const float inv = 1.0f / s;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)), vinv));
    for (; i < n; i++) y[i] = exp_s(x[i] - mx) * inv;
}

A512 void three_pass_reload_avx512(const float *x, float *y, size_t n) {
    const float mx = max_512(x, n);
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 e0 = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        __m512 e1 = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
        __m512 e2 = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), vm));
        __m512 e3 = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), vm));
        _mm512_storeu_ps(y + i, e0);
        _mm512_storeu_ps(y + i + 16, e1);
        _mm512_storeu_ps(y + i + 32, e2);
        _mm512_storeu_ps(y + i + 48, e3);
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
        s2 = _mm512_add_ps(s2, e2);
        s3 = _mm512_add_ps(s3, e3);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        _mm512_storeu_ps(y + i, e);
        s0 = _mm512_add_ps(s0, e);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) {
        y[i] = exp_s(x[i] - mx);
        s += y[i];
    }
    const float inv = 1.0f / s;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), vinv));
    for (; i < n; i++) y[i] *= inv;
}

/* (m, e) += p * 2^(k - e) with the running exponent e raised to max(e, k) first. */
A512 static inline void acc_512(__m512 *m, __m512 *e, __m512 p, __m512 k) {
    __m512 emax = _mm512_max_ps(*e, k);
    *m = _mm512_add_ps(scale_512(*m, _mm512_sub_ps(*e, emax)), scale_512(p, _mm512_sub_ps(k, emax)));
    *e = emax;
}

A512 void two_pass_avx512(const float *x, float *y, size_t n) {
    /* Pass 1: four independent (mantissa sum, exponent) accumulators per lane. The exponents start far
     * below any input's (-2^30 behaves as -inf here: scalef of 0 or by it gives 0). */
    __m512 m0 = _mm512_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    __m512 e0 = _mm512_set1_ps(-1073741824.0f), e1 = e0, e2 = e0, e3 = e0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 k0, k1, k2, k3;
        __m512 p0 = split_512(_mm512_loadu_ps(x + i), &k0);
        __m512 p1 = split_512(_mm512_loadu_ps(x + i + 16), &k1);
        __m512 p2 = split_512(_mm512_loadu_ps(x + i + 32), &k2);
        __m512 p3 = split_512(_mm512_loadu_ps(x + i + 48), &k3);
        acc_512(&m0, &e0, p0, k0);
        acc_512(&m1, &e1, p1, k1);
        acc_512(&m2, &e2, p2, k2);
        acc_512(&m3, &e3, p3, k3);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 k;
        __m512 p = split_512(_mm512_loadu_ps(x + i), &k);
        acc_512(&m0, &e0, p, k);
    }
    acc_512(&m0, &e0, m1, e1);
    acc_512(&m2, &e2, m3, e3);
    acc_512(&m0, &e0, m2, e2);
    const float emax = _mm512_reduce_max_ps(e0);
    float msum = _mm512_reduce_add_ps(scale_512(m0, _mm512_sub_ps(e0, _mm512_set1_ps(emax))));
    float E = emax;
    for (; i < n; i++) { /* scalar tail */
        float p, k;
        split_s(x[i], &p, &k);
        if (k > E) {
            msum = (E - k < -100.0f ? 0.0f : ldexpf(msum, (int)(E - k)));
            E = k;
        }
        msum += k - E < -100.0f ? 0.0f : ldexpf(p, (int)(k - E));
    }
    /* Pass 2: y = p / M * 2^(k - E). */
    const float inv = 1.0f / msum;
    const __m512 vinv = _mm512_set1_ps(inv), vE = _mm512_set1_ps(E);
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 k;
        __m512 p = split_512(_mm512_loadu_ps(x + i), &k);
        _mm512_storeu_ps(y + i, scale_512(_mm512_mul_ps(p, vinv), _mm512_sub_ps(k, vE)));
    }
    for (; i < n; i++) {
        float p, k;
        split_s(x[i], &p, &k);
        y[i] = k - E < -100.0f ? 0.0f : ldexpf(p * inv, (int)(k - E));
    }
}

/* ---------- AVX2 + FMA ---------- */

#define A2 __attribute__((target("avx2,fma")))

A2 static inline __m256 poly_256(__m256 t) {
    __m256 p = _mm256_set1_ps(C5);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(C4));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(C3));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(C2));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(C1));
    return _mm256_fmadd_ps(p, t, _mm256_set1_ps(C0));
}

A2 static inline __m256 split_256(__m256 x, __m256 *n) {
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 t = _mm256_fmadd_ps(k, _mm256_set1_ps(-LN2_HI), x);
    t = _mm256_fmadd_ps(k, _mm256_set1_ps(-LN2_LO), t);
    *n = k;
    return poly_256(t);
}

/* 2^d for integral d <= 0, built in the exponent field (AVX2 has no scalef); 0 where d < CUTOFF. */
A2 static inline __m256 pow2_256(__m256 d) {
    __m256 c = _mm256_max_ps(d, _mm256_set1_ps(CUTOFF));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(c), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_castsi256_ps(bits), _mm256_cmp_ps(d, _mm256_set1_ps(CUTOFF), _CMP_GE_OQ));
}

A2 static inline __m256 exp_256(__m256 x) { /* x <= 0 here (inputs minus their maximum) */
    __m256 n;
    __m256 p = split_256(x, &n);
    return _mm256_mul_ps(p, pow2_256(n));
}

A2 static inline float hmax_256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

A2 static inline float hsum_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

A2 static float max_256(const float *x, size_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
        m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
        m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    float m = hmax_256(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

A2 void three_pass_recompute_avx2(const float *x, float *y, size_t n) {
    const float mx = max_256(x, n);
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
        s1 = _mm256_add_ps(s1, exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm)));
        s2 = _mm256_add_ps(s2, exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vm)));
        s3 = _mm256_add_ps(s3, exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vm)));
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(s0, exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
    float s = hsum_256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += exp_s(x[i] - mx);
    const float inv = 1.0f / s;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)), vinv));
    for (; i < n; i++) y[i] = exp_s(x[i] - mx) * inv;
}

A2 void three_pass_reload_avx2(const float *x, float *y, size_t n) {
    const float mx = max_256(x, n);
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 e0 = exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        __m256 e1 = exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
        __m256 e2 = exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vm));
        __m256 e3 = exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vm));
        _mm256_storeu_ps(y + i, e0);
        _mm256_storeu_ps(y + i + 8, e1);
        _mm256_storeu_ps(y + i + 16, e2);
        _mm256_storeu_ps(y + i + 24, e3);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
        s2 = _mm256_add_ps(s2, e2);
        s3 = _mm256_add_ps(s3, e3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(y + i, e);
        s0 = _mm256_add_ps(s0, e);
    }
    float s = hsum_256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) {
        y[i] = exp_s(x[i] - mx);
        s += y[i];
    }
    const float inv = 1.0f / s;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
    for (; i < n; i++) y[i] *= inv;
}

A2 static inline void acc_256(__m256 *m, __m256 *e, __m256 p, __m256 k) {
    __m256 emax = _mm256_max_ps(*e, k);
    *m = _mm256_fmadd_ps(*m, pow2_256(_mm256_sub_ps(*e, emax)), _mm256_mul_ps(p, pow2_256(_mm256_sub_ps(k, emax))));
    *e = emax;
}

A2 void two_pass_avx2(const float *x, float *y, size_t n) {
    /* the starting exponent -1e9 differs from any input's by far more than 127: its terms are 0 */
    __m256 m0 = _mm256_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    __m256 e0 = _mm256_set1_ps(-1.0e9f), e1 = e0, e2 = e0, e3 = e0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 k0, k1, k2, k3;
        __m256 p0 = split_256(_mm256_loadu_ps(x + i), &k0);
        __m256 p1 = split_256(_mm256_loadu_ps(x + i + 8), &k1);
        __m256 p2 = split_256(_mm256_loadu_ps(x + i + 16), &k2);
        __m256 p3 = split_256(_mm256_loadu_ps(x + i + 24), &k3);
        acc_256(&m0, &e0, p0, k0);
        acc_256(&m1, &e1, p1, k1);
        acc_256(&m2, &e2, p2, k2);
        acc_256(&m3, &e3, p3, k3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 k;
        __m256 p = split_256(_mm256_loadu_ps(x + i), &k);
        acc_256(&m0, &e0, p, k);
    }
    acc_256(&m0, &e0, m1, e1);
    acc_256(&m2, &e2, m3, e3);
    acc_256(&m0, &e0, m2, e2);
    const float emax = hmax_256(e0);
    float msum = hsum_256(_mm256_mul_ps(m0, pow2_256(_mm256_sub_ps(e0, _mm256_set1_ps(emax)))));
    float E = emax;
    for (; i < n; i++) {
        float p, k;
        split_s(x[i], &p, &k);
        if (k > E) {
            msum = (E - k < -100.0f ? 0.0f : ldexpf(msum, (int)(E - k)));
            E = k;
        }
        msum += k - E < -100.0f ? 0.0f : ldexpf(p, (int)(k - E));
    }
    const float inv = 1.0f / msum;
    const __m256 vinv = _mm256_set1_ps(inv), vE = _mm256_set1_ps(E);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 k;
        __m256 p = split_256(_mm256_loadu_ps(x + i), &k);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(p, vinv), pow2_256(_mm256_sub_ps(k, vE))));
    }
    for (; i < n; i++) {
        float p, k;
        split_s(x[i], &p, &k);
        y[i] = k - E < -100.0f ? 0.0f : ldexpf(p * inv, (int)(k - E));
    }
}

/* ---------- the copy roofline and the timing loop ---------- */

void copy_memcpy(const float *x, float *y, size_t n) { memcpy(y, x, n * sizeof(float)); }

typedef void (*kernel_fn)(const float *, float *, size_t);

static kernel_fn kernel(int id) {
    switch (id) {
    case 0: return three_pass_recompute_avx512;
    case 1: return three_pass_reload_avx512;
    case 2: return two_pass_avx512;
    case 3: return three_pass_recompute_avx2;
    case 4: return three_pass_reload_avx2;
    case 5: return two_pass_avx2;
    case 6: return copy_memcpy;
    default: return 0;
    }
}

/* Calls kernel `id` on the buffer pairs (xs + j*n, ys + j*n), j = 0, 1, ..., nbuf-1, 0, ... until at least
 * `min_calls` calls and `min_seconds` have passed (and every pair was used once); returns the seconds
 * per call.  Rotating over more bytes than the last-level cache holds keeps each call out of cache. */
double time_kernel(int id, const float *xs, float *ys, size_t n, size_t nbuf, size_t min_calls, double min_seconds) {
    kernel_fn f = kernel(id);
    if (!f || nbuf == 0) return -1.0;
    struct timespec t0, t1;
    size_t calls = 0, j = 0;
    double elapsed = 0.0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (calls < min_calls || calls < nbuf || elapsed < min_seconds) {
        f(xs + j * n, ys + j * n, n);
        calls++;
        j = (j + 1 == nbuf) ? 0 : j + 1;
        if ((calls & 15) == 0 || calls >= min_calls) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            elapsed = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    elapsed = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return elapsed / (double)calls;
}

/* 1 if this CPU runs the kernels of an instruction set (0: AVX512F, 1: AVX2 + FMA). */
int has_isa(int isa) {
    __builtin_cpu_init();
    return isa == 0 ? __builtin_cpu_supports("avx512f") : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
}
