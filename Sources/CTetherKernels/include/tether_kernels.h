// Hand-written C kernels for the few loops Swift cannot vectorize: Swift has no restrict and no
// fast-math, so a loop over several pointers with a square root (Adam) stays scalar and calls libm's
// sqrtf. Each kernel is compiled for AVX-512, AVX2 and baseline x86-64 (target_clones); the loader
// picks the best one for the CPU it runs on, so one binary stays portable.
#pragma once
#include <stddef.h>

/// One Adam/AdamW step over n parameters (PyTorch's torch.optim.Adam/AdamW arithmetic):
///   g' = g + coupled_wd * p;  m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2
///   p = p * decay - step_size * m / (sqrt(v) / root_bc2 + eps)
/// with step_size = lr / (1 - b1^t), root_bc2 = sqrt(1 - b2^t), decay = 1 - lr * wd for AdamW.
void tether_adam_f32(float *p, float *m, float *v, const float *g, size_t n,
                     float b1, float b2, float eps, float step_size, float root_bc2, float decay, float coupled_wd);
void tether_adam_f64(double *p, double *m, double *v, const double *g, size_t n,
                     double b1, double b2, double eps, double step_size, double root_bc2, double decay, double coupled_wd);
