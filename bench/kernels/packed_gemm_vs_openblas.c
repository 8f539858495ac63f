// The packed kernels (Sources/CTetherKernels/packed_gemm.c) against OpenBLAS's sgemm on one shape,
// one thread: C (M, N) = A (M, K) B (K, N), B given as (N, K) (a dense layer's weight) or (K, N).
// `every` is how many products share one packing (1: packed on every call, as training would; 0:
// packed once, as inference does). The best of 7 rounds of each, interleaved. Built and run by
// bench/packed-gemm.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tether_kernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s M N K TRANSPOSED EVERY\n", argv[0]);
        return 2;
    }
    const long m = atol(argv[1]), n = atol(argv[2]), k = atol(argv[3]);
    const int transposed = atoi(argv[4]), every = atoi(argv[5]);
    const long reps = 200;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k), *c = malloc(sizeof(float) * m * n);
    float *packed = malloc(sizeof(float) * tether_gemm_packed_b_size(n, k));
    for (long i = 0; i < m * k; i++) a[i] = rand() / (float)RAND_MAX - 0.5f;
    for (long i = 0; i < n * k; i++) w[i] = rand() / (float)RAND_MAX - 0.5f;
    tether_gemm_packed_b_pack(packed, w, n, k, transposed);
    double blas = 1e9, ours = 1e9;
    for (int round = 0; round < 7; round++) {
        double t = now();
        for (long r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, transposed ? CblasTrans : CblasNoTrans, m, n, k, 1, a, k, w, transposed ? k : n, 0,
                        c, n);
        t = (now() - t) / reps;
        if (t < blas) blas = t;
        t = now();
        for (long r = 0; r < reps; r++) {
            if (every > 0 && r % every == 0) tether_gemm_packed_b_pack(packed, w, n, k, transposed);
            tether_gemm_packed_b(c, n, a, k, packed, NULL, m, n, k, 0, 0, 0);
        }
        t = (now() - t) / reps;
        if (t < ours) ours = t;
    }
    const double flops = 2.0 * m * n * k;
    printf("{\"m\": %ld, \"n\": %ld, \"k\": %ld, \"b\": \"%s\", \"packed_every\": %d, \"openblas_gflops\": %.1f, \"packed_gflops\": %.1f, "
           "\"ratio\": %.2f}\n",
           m, n, k, transposed ? "(N, K)" : "(K, N)", every, flops / blas / 1e9, flops / ours / 1e9, blas / ours);
    free(a), free(w), free(c), free(packed);
    return 0;
}
