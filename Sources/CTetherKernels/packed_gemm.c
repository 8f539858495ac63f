// A GEMM whose right operand is packed once and used many times: C (M, N) = A (M, K) B (K, N) + bias,
// for an inference pass over frozen weights (the weight is B; packing it per call is what a BLAS does,
// and for predict's shapes it was a tenth of OpenBLAS's GEMM time). The kernel keeps a 12 x 32 block
// of C in 24 AVX-512 registers, reads A where it lies (one broadcast per row and k, as MLAS does) and
// B's panel in order. Each element of C is bias + the products summed in k order, whatever M, the
// block or the thread that computes it: a row's result does not depend on the batch around it.
//
// Packed layout: B's columns in panels of 32 (the last one 16 wide when at most 16 remain); panel p
// holds, for each k in order, its columns' B[k][j], zero-padded past N.
#include "tether_kernels.h"

#include <stddef.h>

static long panel_width(long n, long j) { return n - j > 16 ? 32 : 16; }

// The panels' widths summed: N rounded up to 32, or to 16 when the last panel is a narrow one.
long tether_packed_gemm_size(long n, long k) {
    long r = n % 32;
    return (r == 0 ? n : r <= 16 ? n - r + 16 : n - r + 32) * k;
}

void tether_packed_gemm_pack(float *packed, const float *b, long n, long k, int transposed) {
    for (long j = 0; j < n;) {
        long width = panel_width(n, j);
        for (long kk = 0; kk < k; kk++)
            for (long t = 0; t < width; t++)
                *packed++ = j + t >= n ? 0 : transposed ? b[(j + t) * k + kk] : b[kk * n + j + t];
        j += width;
    }
}

// The reference: the same sums in the same order, for CPUs without AVX-512 (callers prefer OpenBLAS
// there: tether_packed_gemm_fast says which).
void tether_packed_gemm_scalar(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k) {
    for (long j = 0, panel = 0; j < n; panel += panel_width(n, j) * k, j += panel_width(n, j)) {
        long width = panel_width(n, j);
        for (long i = 0; i < m; i++)
            for (long t = 0; t < width && j + t < n; t++) {
                float sum = bias ? bias[j + t] : 0;
                for (long kk = 0; kk < k; kk++) sum = __builtin_fmaf(a[i * lda + kk], packed[panel + kk * width + t], sum);
                c[i * ldc + j + t] = sum;
            }
    }
}

#if defined(__x86_64__) && defined(__has_attribute) && __has_attribute(target)
#include <immintrin.h>

int tether_packed_gemm_fast(void) { return __builtin_cpu_supports("avx512f"); }

#define BLOCK static inline __attribute__((always_inline, target("avx512f")))

static inline __mmask16 lanes(long count) { return count >= 16 ? 0xffff : count <= 0 ? 0 : (__mmask16)((1u << count) - 1); }

// rows (<= 12, a constant where inlined) rows of C over one panel of width 32; columns <= 32 of them real.
BLOCK void block32(int rows, long k, const float *a, long lda, const float *b, float *c, long ldc, const float *bias, long columns) {
    __mmask16 m0 = lanes(columns), m1 = lanes(columns - 16);
    __m512 acc[12][2];
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int i = 0; i < rows; i++) acc[i][0] = b0, acc[i][1] = b1;
    for (long kk = 0; kk < k; kk++) {
        __m512 w0 = _mm512_loadu_ps(b + 32 * kk), w1 = _mm512_loadu_ps(b + 32 * kk + 16);
        for (int i = 0; i < rows; i++) {
            __m512 x = _mm512_set1_ps(a[i * lda + kk]);
            acc[i][0] = _mm512_fmadd_ps(x, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(x, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < rows; i++) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i][0]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc[i][1]);
    }
}

// The same over a panel of width 16.
BLOCK void block16(int rows, long k, const float *a, long lda, const float *b, float *c, long ldc, const float *bias, long columns) {
    __mmask16 m0 = lanes(columns);
    __m512 acc[12];
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    for (int i = 0; i < rows; i++) acc[i] = b0;
    for (long kk = 0; kk < k; kk++) {
        __m512 w0 = _mm512_loadu_ps(b + 16 * kk);
        for (int i = 0; i < rows; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * lda + kk]), w0, acc[i]);
    }
    for (int i = 0; i < rows; i++) _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i]);
}

// A switch to a copy of the block for each row count, so the loops over rows unroll into registers.
#define FOR_ROWS(rows, CALL) \
    switch (rows) { \
    case 12: CALL(12); break; case 11: CALL(11); break; case 10: CALL(10); break; case 9: CALL(9); break; \
    case 8: CALL(8); break; case 7: CALL(7); break; case 6: CALL(6); break; case 5: CALL(5); break; \
    case 4: CALL(4); break; case 3: CALL(3); break; case 2: CALL(2); break; default: CALL(1); break; \
    }

__attribute__((target("avx512f"))) static void packed_gemm_avx512(
    float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k) {
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
#define WIDE(r) block32(r, k, ai, lda, b, cij, ldc, bj, n - j)
#define NARROW(r) block16(r, k, ai, lda, b, cij, ldc, bj, n - j)
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

void tether_packed_gemm(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k) {
    if (tether_packed_gemm_fast()) packed_gemm_avx512(c, ldc, a, lda, packed, bias, m, n, k);
    else tether_packed_gemm_scalar(c, ldc, a, lda, packed, bias, m, n, k);
}
#else
int tether_packed_gemm_fast(void) { return 0; }
void tether_packed_gemm(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k) {
    tether_packed_gemm_scalar(c, ldc, a, lda, packed, bias, m, n, k);
}
#endif
