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
