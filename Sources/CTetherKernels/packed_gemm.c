// GEMMs with one operand packed once and used many times, the other read where it lies.
//
// packed B: C (M, N) = A (M, K) B (K, N) + bias (N), or C += A B when accumulating, then
// x > 0 ? x : slope x where asked (the activation after the layer, fused). A dense layer's inference over frozen weights
// (the weight is B; packing it on every call is what a BLAS does, and for predict's shapes that was a
// tenth of OpenBLAS's GEMM time). B's columns in panels of 32 (the last one 16 wide when at most 16
// remain); panel p holds, for each k in order, its columns' B[k][j], zero-padded past N. A block of
// C is 12 rows x one panel: per k, one broadcast of A per row (as MLAS reads A) and the panel's row.
//
// packed A: C (M, N) = A (M, K) B (K, N). A Winograd convolution's GEMMs, (O, C) x (C, tiles) per
// position and chunk: A is the transformed weight, packed once per convolution and used by every
// chunk. A's rows in panels of 12; panel p holds, for each k in order, its rows' A[i][k], zero-padded
// past M. A block of C is one panel x 32 columns: per k, twelve broadcasts from the panel and B's row.
//
// Both keep a block's 12 x 32 sums in 24 AVX-512 registers. Each element of C is its bias (or 0)
// plus its products in k order, fused: the same bits for any M or N around it, any cut of the work
// and either path (the AVX-512 kernels, or the scalar loops for other CPUs).
#include "tether_kernels.h"

#include <stddef.h>

static long panel_width(long n, long j) { return n - j > 16 ? 32 : 16; }

// The panels' widths summed: N rounded up to 32, or to 16 when the last panel is a narrow one.
long tether_gemm_packed_b_size(long n, long k) {
    long r = n % 32;
    return (r == 0 ? n : r <= 16 ? n - r + 16 : n - r + 32) * k;
}

void tether_gemm_packed_b_pack(float *packed, const float *b, long n, long k, int transposed) {
    for (long j = 0; j < n;) {
        long width = panel_width(n, j);
        for (long kk = 0; kk < k; kk++)
            for (long t = 0; t < width; t++) *packed++ = j + t >= n ? 0 : transposed ? b[(j + t) * k + kk] : b[kk * n + j + t];
        j += width;
    }
}

long tether_gemm_packed_a_size(long m, long k) { return (m + 11) / 12 * 12 * k; }

void tether_gemm_packed_a_pack(float *packed, const float *a, long m, long k) {
    for (long i = 0; i < m; i += 12)
        for (long kk = 0; kk < k; kk++)
            for (long t = 0; t < 12; t++) *packed++ = i + t < m ? a[(i + t) * k + kk] : 0;
}

void tether_gemm_packed_b_scalar(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k,
                                 int accumulate, int activate, float slope) {
    for (long j = 0, panel = 0; j < n; panel += panel_width(n, j) * k, j += panel_width(n, j)) {
        long width = panel_width(n, j);
        for (long i = 0; i < m; i++)
            for (long t = 0; t < width && j + t < n; t++) {
                float sum = accumulate ? c[i * ldc + j + t] : bias ? bias[j + t] : 0;
                for (long kk = 0; kk < k; kk++) sum = __builtin_fmaf(a[i * lda + kk], packed[panel + kk * width + t], sum);
                c[i * ldc + j + t] = activate ? (sum > 0 ? sum : slope * sum) : sum;
            }
    }
}

void tether_gemm_packed_a_scalar(float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k) {
    for (long i = 0; i < m; i++) {
        const float *panel = packed + i / 12 * 12 * k;
        for (long j = 0; j < n; j++) {
            float sum = 0;
            for (long kk = 0; kk < k; kk++) sum = __builtin_fmaf(panel[kk * 12 + i % 12], b[kk * ldb + j], sum);
            c[i * ldc + j] = sum;
        }
    }
}

#if defined(__x86_64__) && defined(__has_attribute) && __has_attribute(target)
#include <immintrin.h>

int tether_gemm_packed_fast(void) { return __builtin_cpu_supports("avx512f"); }

#define BLOCK static inline __attribute__((always_inline, target("avx512f")))

static inline __mmask16 lanes(long count) { return count >= 16 ? 0xffff : count <= 0 ? 0 : (__mmask16)((1u << count) - 1); }

// x > 0 ? x : slope x, lane by lane (the activation layer's expression, so the same bits).
BLOCK __m512 activation(__m512 x, __m512 slope) {
    return _mm512_mask_mov_ps(_mm512_mul_ps(x, slope), _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), x);
}

// rows (<= 12, a constant where inlined) of C over one panel of B of width 32, columns (<= 32) of them real.
BLOCK void b_block32(int rows, long k, const float *a, long lda, const float *b, float *c, long ldc, const float *bias, long columns,
                     int accumulate, int activate, __m512 slope) {
    __mmask16 m0 = lanes(columns), m1 = lanes(columns - 16);
    __m512 acc[12][2];
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int i = 0; i < rows; i++)
        if (accumulate) acc[i][0] = _mm512_maskz_loadu_ps(m0, c + i * ldc), acc[i][1] = _mm512_maskz_loadu_ps(m1, c + i * ldc + 16);
        else acc[i][0] = b0, acc[i][1] = b1;
    for (long kk = 0; kk < k; kk++) {
        __m512 w0 = _mm512_loadu_ps(b + 32 * kk), w1 = _mm512_loadu_ps(b + 32 * kk + 16);
        for (int i = 0; i < rows; i++) {
            __m512 x = _mm512_set1_ps(a[i * lda + kk]);
            acc[i][0] = _mm512_fmadd_ps(x, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(x, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < rows; i++) {
        if (activate) acc[i][0] = activation(acc[i][0], slope), acc[i][1] = activation(acc[i][1], slope);
        _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i][0]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc[i][1]);
    }
}

// The same over a panel of width 16.
BLOCK void b_block16(int rows, long k, const float *a, long lda, const float *b, float *c, long ldc, const float *bias, long columns,
                     int accumulate, int activate, __m512 slope) {
    __mmask16 m0 = lanes(columns);
    __m512 acc[12];
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    for (int i = 0; i < rows; i++) acc[i] = accumulate ? _mm512_maskz_loadu_ps(m0, c + i * ldc) : b0;
    for (long kk = 0; kk < k; kk++) {
        __m512 w0 = _mm512_loadu_ps(b + 16 * kk);
        for (int i = 0; i < rows; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * lda + kk]), w0, acc[i]);
    }
    for (int i = 0; i < rows; i++) _mm512_mask_storeu_ps(c + i * ldc, m0, activate ? activation(acc[i], slope) : acc[i]);
}

// rows (<= 12, a constant where inlined) of C from one panel of A, over columns (<= 32) of B read in
// place (masked: nothing past a row of B is read).
BLOCK void a_block(int rows, long k, const float *panel, const float *b, long ldb, float *c, long ldc, long columns) {
    __mmask16 m0 = lanes(columns), m1 = lanes(columns - 16);
    __m512 acc[12][2];
    for (int i = 0; i < rows; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        __m512 x0 = _mm512_maskz_loadu_ps(m0, b + kk * ldb), x1 = _mm512_maskz_loadu_ps(m1, b + kk * ldb + 16);
        for (int i = 0; i < rows; i++) {
            __m512 w = _mm512_set1_ps(panel[kk * 12 + i]);
            acc[i][0] = _mm512_fmadd_ps(w, x0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(w, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < rows; i++) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i][0]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc[i][1]);
    }
}

// A switch to a copy of the block for each row count, so the loops over rows unroll into registers.
#define FOR_ROWS(rows, CALL) \
    switch (rows) { \
    case 12: CALL(12); break; case 11: CALL(11); break; case 10: CALL(10); break; case 9: CALL(9); break; \
    case 8: CALL(8); break; case 7: CALL(7); break; case 6: CALL(6); break; case 5: CALL(5); break; \
    case 4: CALL(4); break; case 3: CALL(3); break; case 2: CALL(2); break; default: CALL(1); break; \
    }

__attribute__((target("avx512f"))) static void gemm_packed_b_avx512(float *c, long ldc, const float *a, long lda, const float *packed,
                                                                   const float *bias, long m, long n, long k, int accumulate, int activate,
                                                                   float slope) {
    const __m512 slopes = _mm512_set1_ps(slope);
    // Columns in groups whose panels stay in L2 (about 512 KiB) while every block of rows passes over them.
    long group = (512L << 10) / (32 * 4 * (k > 0 ? k : 1)) * 32;
    if (group < 32) group = 32;
    for (long j0 = 0; j0 < n; j0 += group) {
        long j1 = n - j0 > group ? j0 + group : n;
        for (long i = 0; i < m; i += 12) {
            int rows = m - i < 12 ? (int)(m - i) : 12;
            const float *ai = a + i * lda, *b = packed + j0 * k;
            for (long j = j0; j < j1;) {
                long width = panel_width(n, j);
                float *cij = c + i * ldc + j;
                const float *bj = bias ? bias + j : NULL;
#define WIDE(r) b_block32(r, k, ai, lda, b, cij, ldc, bj, n - j, accumulate, activate, slopes)
#define NARROW(r) b_block16(r, k, ai, lda, b, cij, ldc, bj, n - j, accumulate, activate, slopes)
                if (width == 32) {
                    FOR_ROWS(rows, WIDE)
                } else {
                    FOR_ROWS(rows, NARROW)
                }
                b += width * k;
                j += width;
            }
        }
    }
}

__attribute__((target("avx512f"))) static void gemm_packed_a_avx512(
    float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k) {
    // 32 columns of B (k x 128 bytes, in L1 for a convolution's k) against every panel of A in turn.
    for (long j = 0; j < n; j += 32)
        for (long i = 0; i < m; i += 12) {
            int rows = m - i < 12 ? (int)(m - i) : 12;
            const float *panel = packed + i * k, *bj = b + j;
            float *cij = c + i * ldc + j;
#define PANEL(r) a_block(r, k, panel, bj, ldb, cij, ldc, n - j)
            FOR_ROWS(rows, PANEL)
        }
}

void tether_gemm_packed_b(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k,
                          int accumulate, int activate, float slope) {
    if (tether_gemm_packed_fast()) gemm_packed_b_avx512(c, ldc, a, lda, packed, bias, m, n, k, accumulate, activate, slope);
    else tether_gemm_packed_b_scalar(c, ldc, a, lda, packed, bias, m, n, k, accumulate, activate, slope);
}

void tether_gemm_packed_a(float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k) {
    if (tether_gemm_packed_fast()) gemm_packed_a_avx512(c, ldc, packed, b, ldb, m, n, k);
    else tether_gemm_packed_a_scalar(c, ldc, packed, b, ldb, m, n, k);
}
#else
int tether_gemm_packed_fast(void) { return 0; }
void tether_gemm_packed_b(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k,
                          int accumulate, int activate, float slope) {
    tether_gemm_packed_b_scalar(c, ldc, a, lda, packed, bias, m, n, k, accumulate, activate, slope);
}
void tether_gemm_packed_a(float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k) {
    tether_gemm_packed_a_scalar(c, ldc, packed, b, ldb, m, n, k);
}
#endif
