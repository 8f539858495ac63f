#include "tether_kernels.h"
#include <math.h>

#include "attributes.h"

#define ADAM(NAME, T, SQRT)                                                                                    \
    MULTIVERSION void NAME(T *restrict p, T *restrict m, T *restrict v, const T *restrict g, size_t n,          \
                           T b1, T b2, T eps, T step_size, T root_bc2, T decay, T coupled_wd) {                 \
        for (size_t i = 0; i < n; i++) {                                                                       \
            T gi = g[i] + coupled_wd * p[i];                                                                   \
            T mi = b1 * m[i] + (1 - b1) * gi;                                                                  \
            T vi = b2 * v[i] + (1 - b2) * gi * gi;                                                             \
            m[i] = mi;                                                                                         \
            v[i] = vi;                                                                                         \
            p[i] = p[i] * decay - step_size * mi / (SQRT(vi) / root_bc2 + eps);                                \
        }                                                                                                      \
    }

ADAM(tether_adam_f32, float, __builtin_sqrtf)
ADAM(tether_adam_f64, double, __builtin_sqrt)


// im2col / col2im. For each (c, ki, kj) row and output row i, the valid output columns j form one
// range lo..hi-1 (those whose input column lies in the image); stride 1 makes it a contiguous copy.
static inline void valid_columns(const tether_conv_shape *s, long kj, long *lo, long *hi) {
    long first = (s->padding - kj + s->stride - 1) / s->stride;               // first j with iw >= 0
    long end = (s->width + s->padding - kj + s->stride - 1) / s->stride;      // first j with iw >= width
    *lo = first < 0 ? 0 : (first > s->out_w ? s->out_w : first);
    *hi = end > s->out_w ? s->out_w : (end < *lo ? *lo : end);
}

// A "same" convolution (stride 1, out_w == width: cnn-wn's both) needs no row-by-row copy: output
// element d = i*width + j of a (c, ki, kj) row reads input element d + shift, shift = (ki - padding) *
// width + kj - padding, so the valid rows i0..i1-1 are one run from i0*width + lo to (i1-1)*width + hi,
// whose every read lies in the plane; the elements of that run past a row's hi or before its lo (the
// padding, which the run reads from the neighbouring row) form one gap between consecutive rows.
static inline int same_width(const tether_conv_shape *s) { return s->stride == 1 && s->out_w == s->width; }
// The output rows whose input row lies in the image, as valid_columns.
static inline void valid_rows(const tether_conv_shape *s, long ki, long *i0, long *i1) {
    long first = (s->padding - ki + s->stride - 1) / s->stride;               // first i with ih >= 0
    long end = (s->height + s->padding - ki + s->stride - 1) / s->stride;     // first i with ih >= height
    *i0 = first < 0 ? 0 : (first > s->out_h ? s->out_h : first);
    *i1 = end > s->out_h ? s->out_h : (end < *i0 ? *i0 : end);
}

#define IM2COL(NAME, T)                                                                                        \
    MULTIVERSION NO_LIBC_CALLS void NAME(T *restrict col, const T *restrict x, const tether_conv_shape *s, long first,       \
                           long count) {                                                                       \
        const long oh = s->out_h, ow = s->out_w, hw = s->height * s->width, ncol = count * oh * ow;           \
        for (long c = 0; c < s->channels; c++)                                                                 \
            for (long ki = 0; ki < s->kernel_h; ki++)                                                          \
                for (long kj = 0; kj < s->kernel_w; kj++) {                                                    \
                    T *row = col + ((c * s->kernel_h + ki) * s->kernel_w + kj) * ncol;                         \
                    long lo, hi, i0, i1;                                                                       \
                    valid_columns(s, kj, &lo, &hi);                                                            \
                    valid_rows(s, ki, &i0, &i1);                                                               \
                    if (same_width(s)) {                                                                       \
                        const long shift = (ki - s->padding) * ow + kj - s->padding;                           \
                        const long start = i1 > i0 && hi > lo ? i0 * ow + lo : oh * ow;                        \
                        const long end = i1 > i0 && hi > lo ? (i1 - 1) * ow + hi : oh * ow;                    \
                        for (long b = 0; b < count; b++) {                                                     \
                            T *dst = row + b * oh * ow;                                                        \
                            const T *plane = x + (c * s->batch + first + b) * hw;                              \
                            for (long d = 0; d < start; d++) dst[d] = 0;                                       \
                            for (long d = start; d < end; d++) dst[d] = plane[d + shift];                      \
                            for (long d = end; d < oh * ow; d++) dst[d] = 0;                                   \
                            for (long i = i0; i + 1 < i1; i++)                                                 \
                                for (long d = i * ow + hi; d < (i + 1) * ow + lo; d++) dst[d] = 0;             \
                        }                                                                                      \
                        continue;                                                                              \
                    }                                                                                          \
                    for (long b = 0; b < count; b++) {                                                         \
                        const T *plane = x + (c * s->batch + first + b) * hw;                                  \
                        for (long i = 0; i < oh; i++) {                                                        \
                            T *dst = row + (b * oh + i) * ow;                                                  \
                            const long ih = i * s->stride - s->padding + ki;                                   \
                            if (i < i0 || i >= i1) {                                                           \
                                for (long j = 0; j < ow; j++) dst[j] = 0;                                      \
                                continue;                                                                      \
                            }                                                                                  \
                            const T *src = plane + ih * s->width;                                              \
                            const long shift = kj - s->padding;                                                \
                            for (long j = 0; j < lo; j++) dst[j] = 0;                                          \
                            if (s->stride == 1)                                                                \
                                for (long j = lo; j < hi; j++) dst[j] = src[j + shift];                        \
                            else                                                                               \
                                for (long j = lo; j < hi; j++) dst[j] = src[j * s->stride + shift];            \
                            for (long j = hi; j < ow; j++) dst[j] = 0;                                         \
                        }                                                                                      \
                    }                                                                                          \
                }                                                                                              \
    }

// col2im's same-width run adds dcol's gaps too, so it zeroes them first: adding +0 leaves every
// element as it was (a -0 becomes +0, which no gradient tells apart).
#define COL2IM(NAME, T)                                                                                        \
    MULTIVERSION NO_LIBC_CALLS void NAME(T *restrict dx, T *restrict dcol, const tether_conv_shape *s, long first,           \
                           long count) {                                                                       \
        const long oh = s->out_h, ow = s->out_w, hw = s->height * s->width, ncol = count * oh * ow;           \
        for (long c = 0; c < s->channels; c++)                                                                 \
            for (long ki = 0; ki < s->kernel_h; ki++)                                                          \
                for (long kj = 0; kj < s->kernel_w; kj++) {                                                    \
                    T *row = dcol + ((c * s->kernel_h + ki) * s->kernel_w + kj) * ncol;                        \
                    long lo, hi, i0, i1;                                                                       \
                    valid_columns(s, kj, &lo, &hi);                                                            \
                    valid_rows(s, ki, &i0, &i1);                                                               \
                    if (same_width(s)) {                                                                       \
                        if (i1 <= i0 || hi <= lo) continue;                                                    \
                        const long shift = (ki - s->padding) * ow + kj - s->padding;                           \
                        const long start = i0 * ow + lo, end = (i1 - 1) * ow + hi;                             \
                        for (long b = 0; b < count; b++) {                                                     \
                            T *src = row + b * oh * ow;                                                        \
                            T *plane = dx + (c * s->batch + first + b) * hw;                                   \
                            for (long i = i0; i + 1 < i1; i++)                                                 \
                                for (long d = i * ow + hi; d < (i + 1) * ow + lo; d++) src[d] = 0;             \
                            for (long d = start; d < end; d++) plane[d + shift] += src[d];                     \
                        }                                                                                      \
                        continue;                                                                              \
                    }                                                                                          \
                    for (long b = 0; b < count; b++) {                                                         \
                        T *plane = dx + (c * s->batch + first + b) * hw;                                       \
                        for (long i = i0; i < i1; i++) {                                                       \
                            const long ih = i * s->stride - s->padding + ki;                                   \
                            const T *src = row + (b * oh + i) * ow;                                            \
                            T *dst = plane + ih * s->width;                                                    \
                            const long shift = kj - s->padding;                                                \
                            if (s->stride == 1)                                                                \
                                for (long j = lo; j < hi; j++) dst[j + shift] += src[j];                       \
                            else                                                                               \
                                for (long j = lo; j < hi; j++) dst[j * s->stride + shift] += src[j];           \
                        }                                                                                      \
                    }                                                                                          \
                }                                                                                              \
    }

IM2COL(tether_im2col_f32, float)
IM2COL(tether_im2col_f64, double)
COL2IM(tether_col2im_f32, float)
COL2IM(tether_col2im_f64, double)

// 2x2 max pooling, stride 2, over planes of h x w (an odd last row or column is in no window). Ties
// go to the first maximum in scan order (strict >), as in PyTorch; branch-free, so clang vectorizes
// the window loop. Backward writes all of dx, a pair of rows at a time while they are in cache:
// zeros, then each window's dy at its winner.
#define MAXPOOL2X2(NAME, BACKWARD, T)                                                                          \
    MULTIVERSION void NAME(T *restrict y, int32_t *restrict argmax, const T *restrict x, long planes, long h,   \
                           long w) {                                                                           \
        const long oh = h / 2, ow = w / 2;                                                                     \
        for (long p = 0; p < planes; p++)                                                                      \
            for (long i = 0; i < oh; i++) {                                                                    \
                const T *r0 = x + (p * h + 2 * i) * w, *r1 = r0 + w;                                           \
                T *yo = y + (p * oh + i) * ow;                                                                 \
                int32_t *ao = argmax + (p * oh + i) * ow;                                                      \
                const int32_t top = (int32_t)(2 * i * w);                                                      \
                for (long j = 0; j < ow; j++) {                                                                \
                    const int32_t q = top + (int32_t)(2 * j);                                                  \
                    T best = r0[2 * j];                                                                        \
                    int32_t at = q;                                                                            \
                    at = r0[2 * j + 1] > best ? q + 1 : at;                                                    \
                    best = r0[2 * j + 1] > best ? r0[2 * j + 1] : best;                                        \
                    at = r1[2 * j] > best ? q + (int32_t)w : at;                                               \
                    best = r1[2 * j] > best ? r1[2 * j] : best;                                                \
                    at = r1[2 * j + 1] > best ? q + (int32_t)w + 1 : at;                                       \
                    best = r1[2 * j + 1] > best ? r1[2 * j + 1] : best;                                        \
                    yo[j] = best;                                                                              \
                    ao[j] = at;                                                                                \
                }                                                                                              \
            }                                                                                                  \
    }                                                                                                          \
    MULTIVERSION NO_LIBC_CALLS void BACKWARD(T *restrict dx, const T *restrict dy, const int32_t *restrict argmax, long planes, \
                               long h, long w) {                                                               \
        const long oh = h / 2, ow = w / 2;                                                                     \
        for (long p = 0; p < planes; p++) {                                                                    \
            T *plane = dx + p * h * w;                                                                         \
            for (long i = 0; i < oh; i++) {                                                                    \
                T *pair = plane + 2 * i * w;                                                                   \
                const T *g = dy + (p * oh + i) * ow;                                                           \
                const int32_t *a = argmax + (p * oh + i) * ow;                                                 \
                for (long j = 0; j < 2 * w; j++) pair[j] = 0;                                                  \
                for (long j = 0; j < ow; j++) plane[a[j]] = g[j];                                              \
            }                                                                                                  \
            if (h % 2)                                                                                         \
                for (long j = 0; j < w; j++) plane[(h - 1) * w + j] = 0;                                       \
        }                                                                                                      \
    }
MAXPOOL2X2(tether_maxpool2x2_f32, tether_maxpool2x2_backward_f32, float)
MAXPOOL2X2(tether_maxpool2x2_f64, tether_maxpool2x2_backward_f64, double)

#define ADD(NAME, T)                                                                                           \
    MULTIVERSION void NAME(T *restrict y, const T *restrict x, size_t n) {                                     \
        for (size_t i = 0; i < n; i++) y[i] += x[i];                                                           \
    }
ADD(tether_add_f32, float)
ADD(tether_add_f64, double)

MULTIVERSION void tether_low_rank_product_f32(float *restrict out, const float *restrict from, const float *restrict p,
                                              const float *restrict qt, long rows, long cols, long rank) {
#pragma clang fp contract(off)
    for (long i = 0; i < rows; i++) {
        float *restrict o = out + i * cols;
        const float *pi = p + i * rank;
        if (rank == 0) {
            for (long j = 0; j < cols; j++) o[j] = 0;
        } else {
            for (long j = 0; j < cols; j++) o[j] = pi[0] * qt[j];
            for (long k = 1; k < rank; k++) {
                const float a = pi[k], *restrict row = qt + k * cols;
                for (long j = 0; j < cols; j++) o[j] = o[j] + a * row[j];
            }
        }
        if (from) {
            const float *restrict f = from + i * cols;
            for (long j = 0; j < cols; j++) o[j] = f[j] - o[j];
        }
    }
}

// Wire dtypes. Half precision through the compiler's _Float16 (IEEE conversions, round to nearest
// even; vcvtps2ph/vcvtph2ps with F16C and AVX-512, a library routine otherwise).
static inline uint32_t f32_bits(float x) { uint32_t b; __builtin_memcpy(&b, &x, 4); return b; }
static inline float bits_f32(uint32_t b) { float x; __builtin_memcpy(&x, &b, 4); return x; }
static inline uint16_t f16_bits(_Float16 h) { uint16_t b; __builtin_memcpy(&b, &h, 2); return b; }
static inline _Float16 bits_f16(uint16_t b) { _Float16 h; __builtin_memcpy(&h, &b, 2); return h; }

MULTIVERSION void tether_f32_to_f16(uint16_t *restrict y, const float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = f16_bits((_Float16)x[i]);
}
MULTIVERSION void tether_f16_to_f32(float *restrict y, const uint16_t *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = (float)bits_f16(x[i]);
}
MULTIVERSION void tether_add_f16_to_f32(float *restrict y, const uint16_t *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += (float)bits_f16(x[i]);
}

// bfloat16: the upper half of the f32 bits, rounded to nearest even on the dropped half; a NaN keeps
// its sign and becomes quiet (rounding could carry a NaN's payload into infinity).
static inline uint16_t bf16_from_bits(uint32_t b) {
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
MULTIVERSION void tether_f32_to_bf16(uint16_t *restrict y, const float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = bf16_from_bits(f32_bits(x[i]));
}
MULTIVERSION void tether_bf16_to_f32(float *restrict y, const uint16_t *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = bits_f32((uint32_t)x[i] << 16);
}
MULTIVERSION void tether_add_bf16_to_f32(float *restrict y, const uint16_t *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += bits_f32((uint32_t)x[i] << 16);
}

// The reference for half: bit arithmetic only, no compiler conversion, so the tests hold the
// multiversioned kernels (and the compiler's lowering) to an independent implementation.
uint16_t tether_f32_to_f16_scalar(float x) {
    uint32_t b = f32_bits(x), sign = (b >> 16) & 0x8000u, abs = b & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));   // NaN, quiet
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                            // >= 65520: infinity
    if (abs < 0x38800000u) {                                                              // below 2^-14: subnormal or zero
        if (abs < 0x33000000u) return (uint16_t)sign;                                     // below 2^-25: rounds to zero
        uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u, shift = 126 - e;       // value = m * 2^(e-150)
        uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = (abs - 0x38000000u) >> 13, rest = abs & 0x1fffu;                         // rebias 127 -> 15
    if (rest > 0x1000u || (rest == 0x1000u && (q & 1u))) q++;                              // may carry into the exponent
    return (uint16_t)(sign | q);
}

float tether_f16_to_f32_scalar(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0));   // a NaN comes out quiet
    if (e != 0) return bits_f32(sign | ((e + 112) << 23) | (m << 13));
    if (m == 0) return bits_f32(sign);
    while (!(m & 0x400u)) { m <<= 1; e++; }                                                  // normalize a subnormal
    return bits_f32(sign | ((113 - e) << 23) | ((m & 0x3ffu) << 13));
}


// exp for floats as a vectorizable inline function (Cephes' expf: exp(x) = 2^n exp(r), |r| <= ln2/2,
// a degree-6 polynomial for exp(r)). libm's expf is a call per element that the compiler cannot
// vectorize; this loop runs 8 lanes wide under AVX2.
static inline float vexpf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = __builtin_roundf(x * 1.44269504088896341f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int i; float f; } scale = {.i = ((int)n + 127) << 23};
    return p * scale.f;
}
static inline float vsigmoidf(float x) { return 1.0f / (1.0f + vexpf(-x)); }
// tanh(x) = 1 - 2 / (exp(2x) + 1): no cancellation for large |x|; near 0 the absolute error is ~1e-7.
static inline float vtanhf(float x) { return 1.0f - 2.0f / (vexpf(2.0f * x) + 1.0f); }

// Reassociating the max and the sum lets them run 8 lanes wide (the order of a sum of positive
// terms changes its value only in the last bits).
static inline float row_max(const float *restrict z, long k) {
#pragma clang fp reassociate(on)
    float m = -__builtin_inff();
    for (long j = 0; j < k; j++) m = __builtin_fmaxf(m, z[j]);
    return m;
}
static inline float exp_row(float *restrict p, const float *restrict z, float maxz, long k) {
#pragma clang fp reassociate(on)
    float total = 0;
    for (long j = 0; j < k; j++) { const float e = vexpf(z[j] - maxz); p[j] = e; total += e; }
    return total;
}

MULTIVERSION void tether_softmax_xent_f32(float *restrict probs, float *restrict losses, const float *restrict logits,
                                          const int *restrict labels, long b, long k) {
    for (long i = 0; i < b; i++) {
        const float *z = logits + i * k;
        float *p = probs + i * k;
        const float maxz = row_max(z, k), total = exp_row(p, z, maxz, k);
        const float inv = 1.0f / total;
        for (long j = 0; j < k; j++) p[j] *= inv;
        losses[i] = (float)((double)maxz + log((double)total) - (double)z[labels[i]]);
    }
}

MULTIVERSION void tether_lstm_cell_forward_f32(float *restrict gates, float *restrict c, float *restrict tanh_c,
                                               float *restrict h, const float *restrict c_prev, long b, long hidden) {
    for (long r = 0; r < b; r++) {
        float *gi = gates + r * 4 * hidden, *gf = gi + hidden, *gg = gf + hidden, *go = gg + hidden;
        float *cr = c + r * hidden, *tr = tanh_c + r * hidden, *hr = h + r * hidden;
        const float *cp = c_prev + r * hidden;
        // The four gate rows of a sample never overlap.
#pragma clang loop vectorize(assume_safety)
        for (long j = 0; j < hidden; j++) {
            const float i = vsigmoidf(gi[j]), f = vsigmoidf(gf[j]), g = vtanhf(gg[j]), o = vsigmoidf(go[j]);
            gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
            const float cj = f * cp[j] + i * g, tj = vtanhf(cj);
            cr[j] = cj; tr[j] = tj; hr[j] = o * tj;
        }
    }
}

MULTIVERSION void tether_lstm_cell_backward_f32(float *restrict dgates, float *restrict dc_prev, const float *restrict dh,
                                                const float *restrict dc, const float *restrict gates,
                                                const float *restrict c_prev, const float *restrict tanh_c, long b, long hidden) {
    for (long r = 0; r < b; r++) {
        const float *gi = gates + r * 4 * hidden, *gf = gi + hidden, *gg = gf + hidden, *go = gg + hidden;
        float *di = dgates + r * 4 * hidden, *df = di + hidden, *dg = df + hidden, *dout = dg + hidden;
        const float *dhr = dh + r * hidden, *dcr = dc + r * hidden, *cp = c_prev + r * hidden, *tr = tanh_c + r * hidden;
        float *dcp = dc_prev + r * hidden;
        // The four gate rows of a sample never overlap.
#pragma clang loop vectorize(assume_safety)
        for (long j = 0; j < hidden; j++) {
            const float i = gi[j], f = gf[j], g = gg[j], o = go[j], t = tr[j];
            const float total = dcr[j] + dhr[j] * o * (1 - t * t);
            dout[j] = dhr[j] * t * o * (1 - o);
            di[j] = total * g * i * (1 - i);
            df[j] = total * cp[j] * f * (1 - f);
            dg[j] = total * i * (1 - g * g);
            dcp[j] = total * f;
        }
    }
}

MULTIVERSION double tether_sum_squares_f32(const float *restrict x, size_t n) {
#pragma clang fp reassociate(on)
    double total = 0;
    for (size_t i = 0; i < n; i++) total += (double)x[i] * (double)x[i];
    return total;
}


int tether_cpu_vector_level(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    // __builtin_cpu_supports also asks the OS (XCR0) whether it saves the registers
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}
