#include "tether_kernels.h"
#include <math.h>

#if defined(__x86_64__) && defined(__has_attribute) && __has_attribute(target_clones)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

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

// The runs below are short (an output row: 14 floats in cnn-wn); left alone, clang turns them into
// calls to memcpy/memset, whose per-call cost exceeded the copy itself (measured: docs/ARCHITECTURE.md).
#if defined(__has_attribute) && __has_attribute(no_builtin)
#define NO_LIBC_CALLS __attribute__((no_builtin("memcpy", "memset", "memmove")))
#else
#define NO_LIBC_CALLS
#endif

// im2col / col2im. For each (c, ki, kj) row and output row i, the valid output columns j form one
// range lo..hi-1 (those whose input column lies in the image); stride 1 makes it a contiguous copy.
static inline void valid_columns(const tether_conv_shape *s, long kj, long *lo, long *hi) {
    long first = (s->padding - kj + s->stride - 1) / s->stride;               // first j with iw >= 0
    long end = (s->width + s->padding - kj + s->stride - 1) / s->stride;      // first j with iw >= width
    *lo = first < 0 ? 0 : (first > s->out_w ? s->out_w : first);
    *hi = end > s->out_w ? s->out_w : (end < *lo ? *lo : end);
}

#define IM2COL(NAME, T)                                                                                        \
    MULTIVERSION NO_LIBC_CALLS void NAME(T *restrict col, const T *restrict x, const tether_conv_shape *s, long first,       \
                           long count) {                                                                       \
        const long oh = s->out_h, ow = s->out_w, hw = s->height * s->width, ncol = count * oh * ow;           \
        for (long c = 0; c < s->channels; c++)                                                                 \
            for (long ki = 0; ki < s->kernel_h; ki++)                                                          \
                for (long kj = 0; kj < s->kernel_w; kj++) {                                                    \
                    T *row = col + ((c * s->kernel_h + ki) * s->kernel_w + kj) * ncol;                         \
                    long lo, hi;                                                                               \
                    valid_columns(s, kj, &lo, &hi);                                                            \
                    for (long b = 0; b < count; b++) {                                                         \
                        const T *plane = x + (c * s->batch + first + b) * hw;                                  \
                        for (long i = 0; i < oh; i++) {                                                        \
                            T *dst = row + (b * oh + i) * ow;                                                  \
                            const long ih = i * s->stride - s->padding + ki;                                   \
                            if (ih < 0 || ih >= s->height) {                                                   \
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

#define COL2IM(NAME, T)                                                                                        \
    MULTIVERSION void NAME(T *restrict dx, const T *restrict dcol, const tether_conv_shape *s, long first,     \
                           long count) {                                                                       \
        const long oh = s->out_h, ow = s->out_w, hw = s->height * s->width, ncol = count * oh * ow;           \
        for (long c = 0; c < s->channels; c++)                                                                 \
            for (long ki = 0; ki < s->kernel_h; ki++)                                                          \
                for (long kj = 0; kj < s->kernel_w; kj++) {                                                    \
                    const T *row = dcol + ((c * s->kernel_h + ki) * s->kernel_w + kj) * ncol;                  \
                    long lo, hi;                                                                               \
                    valid_columns(s, kj, &lo, &hi);                                                            \
                    for (long b = 0; b < count; b++) {                                                         \
                        T *plane = dx + (c * s->batch + first + b) * hw;                                       \
                        for (long i = 0; i < oh; i++) {                                                        \
                            const long ih = i * s->stride - s->padding + ki;                                   \
                            if (ih < 0 || ih >= s->height) continue;                                           \
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

#define ADD(NAME, T)                                                                                           \
    MULTIVERSION void NAME(T *restrict y, const T *restrict x, size_t n) {                                     \
        for (size_t i = 0; i < n; i++) y[i] += x[i];                                                           \
    }
ADD(tether_add_f32, float)
ADD(tether_add_f64, double)

#if defined(__GLIBC__)
#include <malloc.h>
void tether_keep_heap_memory(size_t mmap_threshold, size_t trim_threshold) {
    mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
}
#else
void tether_keep_heap_memory(size_t mmap_threshold, size_t trim_threshold) { (void)mmap_threshold; (void)trim_threshold; }
#endif

void tether_pending_add(long *pending, long n) { __atomic_fetch_add(pending, n, __ATOMIC_SEQ_CST); }
long tether_pending_load(const long *pending) { return __atomic_load_n(pending, __ATOMIC_ACQUIRE); }
void tether_pending_release(void *data, void *hint) {
    (void)data;
    __atomic_fetch_sub((long *)hint, 1, __ATOMIC_RELEASE);
}
