// Hand-written C kernels for the few loops Swift cannot vectorize: Swift has no restrict and no
// fast-math, so a loop over several pointers with a square root (Adam) stays scalar and calls libm's
// sqrtf. Each kernel is compiled for AVX-512, AVX2 and baseline x86-64 (target_clones); the loader
// picks the best one for the CPU it runs on, so one binary stays portable.
#pragma once
#include <stddef.h>
#include <stdint.h>

/// One Adam/AdamW step over n parameters (PyTorch's torch.optim.Adam/AdamW arithmetic):
///   g' = g + coupled_wd * p;  m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2
///   p = p * decay - step_size * m / (sqrt(v) / root_bc2 + eps)
/// with step_size = lr / (1 - b1^t), root_bc2 = sqrt(1 - b2^t), decay = 1 - lr * wd for AdamW.
void tether_adam_f32(float *p, float *m, float *v, const float *g, size_t n,
                     float b1, float b2, float eps, float step_size, float root_bc2, float decay, float coupled_wd);
void tether_adam_f64(double *p, double *m, double *v, const double *g, size_t n,
                     double b1, double b2, double eps, double step_size, double root_bc2, double decay, double coupled_wd);

/// One 2-D convolution over an input x (C, B, H, W) with square-or-not kernels, one stride and one
/// zero padding on every side; out_h/out_w are derived by the caller (Swift's ConvGeometry).
typedef struct {
    long channels, batch, height, width;
    long kernel_h, kernel_w, stride, padding;
    long out_h, out_w;
} tether_conv_shape;

/// col (C*KH*KW, n*OH*OW) = im2col of the n = count samples first..first+count-1 of x.
/// Row (c, ki, kj), column (b - first, i, j) holds x[c, b, i*stride - padding + ki, j*stride - padding + kj],
/// 0 outside the image.
void tether_im2col_f32(float *col, const float *x, const tether_conv_shape *s, long first, long count);
void tether_im2col_f64(double *col, const double *x, const tether_conv_shape *s, long first, long count);
/// The adjoint: accumulates dx (C, B, H, W) += col2im(dcol) for the same samples. Clobbers dcol's
/// elements that fall outside the image (sets them to 0).
void tether_col2im_f32(float *dx, float *dcol, const tether_conv_shape *s, long first, long count);
void tether_col2im_f64(double *dx, double *dcol, const tether_conv_shape *s, long first, long count);

/// Winograd F(2x2, rxr) for a stride-1 convolution of x (C, B, H, W) with r x r filters, r = s->kernel_h
/// = 3 or 5, a = r + 1 (winograd.c says how). weights: u (a^2, outs, ins) from w (outs, ins, r, r);
/// `transposed`: from w (ins, outs, r, r) read as the filters of the adjoint convolution (input and
/// output channels swapped, each filter turned 180 degrees), which carries dy back to dx. input: v
/// (a^2, C, n) for the images first..first+count-1, n = count * tiles_h * tiles_w, with `pad` scratch
/// of (2 tiles_h + r - 1 + a) x (2 tiles_w + r - 1) (the padded plane, and a row of tiles' columns). output: y (outs, B, out_h, out_w) of those images from
/// m (a^2, outs, n), plus bias (or NULL), with `corners` scratch of 4 n. tiles_h = ceil(out_h / 2),
/// tiles_w = ceil(out_w / 2). `stride`: elements from one of the a^2 matrices of v or m to the next (at
/// least C n or outs n).
void tether_winograd_weights_f32(float *u, const float *w, long kernel, long outs, long ins, int transposed);
void tether_winograd_weights_f64(double *u, const double *w, long kernel, long outs, long ins, int transposed);
void tether_winograd_input_f32(float *v, long stride, const float *x, const tether_conv_shape *s, long first, long count, float *pad);
void tether_winograd_input_f64(double *v, long stride, const double *x, const tether_conv_shape *s, long first, long count, double *pad);
void tether_winograd_output_f32(float *y, const float *m, long stride, const float *bias, long outs, const tether_conv_shape *s,
                                long first, long count, float *corners);
void tether_winograd_output_f64(double *y, const double *m, long stride, const double *bias, long outs, const tether_conv_shape *s,
                                long first, long count, double *corners);
/// The output transform fused with the 2x2 max pool after it, then (when `activate`) x > 0 ? x : slope x:
/// y (outs, B, out_h / 2, out_w / 2), the same bits as the three one after another (winograd_body.h).
void tether_winograd_output_pooled_f32(float *y, const float *m, long stride, const float *bias, long outs, const tether_conv_shape *s,
                                       long first, long count, float *corners, int activate, float slope);
void tether_winograd_output_pooled_f64(double *y, const double *m, long stride, const double *bias, long outs,
                                       const tether_conv_shape *s, long first, long count, double *corners, int activate, double slope);

/// GEMMs with one operand packed once (packed_gemm.c says how and why). Every element of C is its
/// bias (or 0) plus its products in k order, fused: the same bits for any M or N, any cut of the work,
/// and the AVX-512 kernel or the scalar loop (tether_gemm_packed_fast: whether the CPU runs the former).
/// packed B: C (M, N) = A (M, K) B (K, N) + bias (N; NULL: none), or C + A B when `accumulate` (the
/// sums start from C; bias unused), then x > 0 ? x : slope x when `activate` (the activation layer's
/// expression: the same bits); `packed` holds
/// tether_gemm_packed_b_size(n, k) floats from b, which is (K, N) row-major, or (N, K) when
/// `transposed` (a dense layer's weight).
/// packed A: C (M, N) = A (M, K) B (K, N); `packed` holds tether_gemm_packed_a_size(m, k) floats from
/// a (M, K) row-major.
int tether_gemm_packed_fast(void);
long tether_gemm_packed_b_size(long n, long k);
void tether_gemm_packed_b_pack(float *packed, const float *b, long n, long k, int transposed);
void tether_gemm_packed_b(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n, long k,
                          int accumulate, int activate, float slope);
void tether_gemm_packed_b_scalar(float *c, long ldc, const float *a, long lda, const float *packed, const float *bias, long m, long n,
                                 long k, int accumulate, int activate, float slope);
long tether_gemm_packed_a_size(long m, long k);
void tether_gemm_packed_a_pack(float *packed, const float *a, long m, long k);
void tether_gemm_packed_a(float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k);
void tether_gemm_packed_a_scalar(float *c, long ldc, const float *packed, const float *b, long ldb, long m, long n, long k);

/// 2x2, stride 2 max pooling of `planes` planes of h x w: y (planes, h/2, w/2) and argmax (the winner's
/// index in its plane; the first maximum in scan order on ties). Backward sets all of dx (planes, h, w):
/// dy at each window's winner, 0 elsewhere. Indices fit int32 (h * w does: the caller checks).
void tether_maxpool2x2_f32(float *y, int32_t *argmax, const float *x, long planes, long h, long w);
void tether_maxpool2x2_f64(double *y, int32_t *argmax, const double *x, long planes, long h, long w);
void tether_maxpool2x2_backward_f32(float *dx, const float *dy, const int32_t *argmax, long planes, long h, long w);
void tether_maxpool2x2_backward_f64(double *dx, const double *dy, const int32_t *argmax, long planes, long h, long w);

/// y[i] += x[i]: the reduction of the ring all-reduce.
void tether_add_f32(float *y, const float *x, size_t n);
void tether_add_f64(double *y, const double *x, size_t n);

/// PowerSGD's low-rank product: out (rows x cols) = p (rows x rank) times qt (rank x cols), each
/// element summed over the rank in order, p[i,0] qt[0,j] first; or, with `from` (rows x cols), out =
/// from - that product (the error feedback). Never fused into FMAs (contraction is off), so every CPU
/// and every clone computes the same bits and the replicas stay equal.
void tether_low_rank_product_f32(float *out, const float *from, const float *p, const float *qt, long rows, long cols, long rank);

/// Wire dtypes (the compression issue): IEEE half and bfloat16, narrowed from f32 with round to
/// nearest, ties to even (overflow to infinity, NaN kept a quiet NaN of the same sign), widened exactly
/// (a NaN widens to a quiet NaN with its payload, as the hardware's conversion does).
/// Multiversioned (F16C / AVX-512 where the CPU has them); the `_scalar` forms are the bit-exact
/// references the tests hold the others to. y[i] += widen(x[i]) reduces a received chunk in f32.
void tether_f32_to_f16(uint16_t *y, const float *x, size_t n);
void tether_f16_to_f32(float *y, const uint16_t *x, size_t n);
void tether_add_f16_to_f32(float *y, const uint16_t *x, size_t n);
void tether_f32_to_bf16(uint16_t *y, const float *x, size_t n);
void tether_bf16_to_f32(float *y, const uint16_t *x, size_t n);
void tether_add_bf16_to_f32(float *y, const uint16_t *x, size_t n);
uint16_t tether_f32_to_f16_scalar(float x);
float tether_f16_to_f32_scalar(uint16_t h);

/// The widest vector instructions this CPU and its OS run: 2 for AVX-512 (F, CD, BW, DQ, VL: what
/// OpenBLAS's SkylakeX kernels use), 1 for AVX2 with FMA (its Haswell kernels), 0 otherwise.
int tether_cpu_vector_level(void);


/// Softmax cross-entropy over (B, K) float logits, with a vectorized exp (relative error < 2e-7):
/// probs (B, K) = softmax(logits); losses (B) = -log probs[label], computed from the logits.
void tether_softmax_xent_f32(float *probs, float *losses, const float *logits, const int *labels, long b, long k);

/// The pointwise part of one LSTM step for B rows of H units, PyTorch's gate order (i, f, g, o).
/// Forward: gates (B, 4H) holds the pre-activations on entry and the activations on return;
/// c = f * c_prev + i * g, tanh_c = tanh(c), h = o * tanh_c (each (B, H)).
void tether_lstm_cell_forward_f32(float *gates, float *c, float *tanh_c, float *h, const float *c_prev, long b, long hidden);
/// Backward: from dh and dc (the gradients reaching h and c of this step) writes dgates (B, 4H), the
/// gradient of the pre-activations, and dc_prev = dc_total * f.
void tether_lstm_cell_backward_f32(float *dgates, float *dc_prev, const float *dh, const float *dc, const float *gates,
                                   const float *c_prev, const float *tanh_c, long b, long hidden);

/// The sum of squares of n floats, accumulated in double.
double tether_sum_squares_f32(const float *x, size_t n);


/// The process's compute pool (pool.c): `threads` threads counting the caller; OpenBLAS runs
/// single-threaded inside them. set_threads sets the size every thread uses by default, growing the pool
/// (never beyond 256), and returns the size it has; use_threads_here gives the calling thread a size of
/// its own (0: the default again) and returns the one it had; threads is the calling thread's size.
/// run calls fn(context, task, worker) once for each task in 0..<tasks, across the calling thread's
/// size of the pool, and returns when all are done; worker (0 the caller) names the thread, for
/// per-thread scratch. A job started inside a task runs inline on that task's thread and worker index;
/// one started while another thread's job runs, inline on its caller as worker 0.
typedef void (*tether_pool_task)(void *context, long task, long worker);
int tether_pool_set_threads(int threads);
int tether_pool_use_threads_here(int threads);
int tether_pool_threads(void);
/// 1 on a thread running a pool task (a job it starts runs inline), else 0.
int tether_pool_in_task(void);
void tether_pool_run(long tasks, tether_pool_task fn, void *context);
