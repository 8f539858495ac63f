// The Winograd kernels for one precision: winograd.c includes this once with T float and once with T
// double. (No include guard, on purpose.) Each transform is a 1-D one applied to the columns of a
// tile, then to the rows of the result; the 1-D ones are written out with their nonzero
// coefficients only (winograd.c has the matrices).

// B^T d: 4 -> 4 (F(2, 3)) and 6 -> 6 (F(2, 5)), reading d at a stride
static inline __attribute__((always_inline)) void SUFFIX(input_1d_3)(T *o, const T *d, long s) {
    o[0] = d[0] - d[2 * s];
    o[1] = d[s] + d[2 * s];
    o[2] = d[2 * s] - d[s];
    o[3] = d[s] - d[3 * s];
}
static inline __attribute__((always_inline)) void SUFFIX(input_1d_5)(T *o, const T *d, long s) {
    const T d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    o[0] = 4 * d0 - 5 * d2 + d4;
    o[1] = d3 + d4 - 4 * (d1 + d2);
    o[2] = d4 - d3 + 4 * (d1 - d2);
    o[3] = d4 - d2 + 2 * (d3 - d1);
    o[4] = d4 - d2 + 2 * (d1 - d3);
    o[5] = 4 * d1 - 5 * d3 + d5;
}
// G g: 3 -> 4 and 5 -> 6
static inline __attribute__((always_inline)) void SUFFIX(weight_1d_3)(T *u, const T *g, long s) {
    u[0] = g[0];
    u[1] = (g[0] + g[s] + g[2 * s]) / 2;
    u[2] = (g[0] - g[s] + g[2 * s]) / 2;
    u[3] = g[2 * s];
}
static inline __attribute__((always_inline)) void SUFFIX(weight_1d_5)(T *u, const T *g, long s) {
    const T g0 = g[0], g1 = g[s], g2 = g[2 * s], g3 = g[3 * s], g4 = g[4 * s];
    u[0] = g0 / 4;
    u[1] = -(g0 + g1 + g2 + g3 + g4) / 6;
    u[2] = -(g0 - g1 + g2 - g3 + g4) / 6;
    u[3] = g0 / 24 + g1 / 12 + g2 / 6 + g3 / 3 + 2 * g4 / 3;
    u[4] = g0 / 24 - g1 / 12 + g2 / 6 - g3 / 3 + 2 * g4 / 3;
    u[5] = g4;
}
// A^T m: 4 -> 2 and 6 -> 2
static inline __attribute__((always_inline)) void SUFFIX(output_1d_3)(T *y, const T *m, long s) {
    y[0] = m[0] + m[s] + m[2 * s];
    y[1] = m[s] - m[2 * s] - m[3 * s];
}
static inline __attribute__((always_inline)) void SUFFIX(output_1d_5)(T *y, const T *m, long s) {
    y[0] = m[0] + m[s] + m[2 * s] + m[3 * s] + m[4 * s];
    y[1] = m[s] - m[2 * s] + 2 * (m[3 * s] - m[4 * s]) + m[5 * s];
}

MULTIVERSION void SUFFIX(tether_winograd_weights)(T *restrict u, const T *restrict w, long kernel, long outs, long ins, int transposed) {
    const long r = kernel, a = r + 1;
    for (long o = 0; o < outs; o++)
        for (long i = 0; i < ins; i++) {
            // g: the r x r filter from input channel i to output o
            T g[5 * 5], t[6 * 5], e[6 * 6];
            const T *f = transposed ? w + (i * outs + o) * r * r : w + (o * ins + i) * r * r;
            for (long p = 0; p < r; p++)
                for (long q = 0; q < r; q++) g[p * r + q] = transposed ? f[(r - 1 - p) * r + r - 1 - q] : f[p * r + q];
            for (long q = 0; q < r; q++) {  // t (a, r) = G g, column by column
                T column[6];
                if (r == 3) SUFFIX(weight_1d_3)(column, g + q, r); else SUFFIX(weight_1d_5)(column, g + q, r);
                for (long p = 0; p < a; p++) t[p * r + q] = column[p];
            }
            for (long p = 0; p < a; p++) {  // e (a, a) = t G^T, row by row
                if (r == 3) SUFFIX(weight_1d_3)(e + p * a, t + p * r, 1); else SUFFIX(weight_1d_5)(e + p * a, t + p * r, 1);
            }
            for (long p = 0; p < a * a; p++) u[(p * outs + o) * ins + i] = e[p];
        }
}

// One row of tiles' B^T d B from the A padded rows at d (pw apart): each column's B^T d once, into col
// (A, pw), then each tile's (B^T d) B from its A columns 2 tj .., to o[(k A + l) step + tj]. Tile by
// tile, each column was transformed once per tile reading it (A / 2 tiles overlap a column: 3x the
// work for 5x5), and a tile's 36 values went to 36 matrices one float at a time; now both loops run
// over a row's columns or tiles (measured: docs/ARCHITECTURE.md).
#define INPUT_ROW(R, A)                                                                                          \
    static inline __attribute__((always_inline)) void SUFFIX(input_row_##R)(T *restrict o, long step, const T *restrict d, long pw, \
                                                                           long tw, T *restrict col) {           \
        for (long x = 0; x < pw; x++) {                                                                          \
            T v[A];                                                                                              \
            SUFFIX(input_1d_##R)(v, d + x, pw);                                                                  \
            for (int k = 0; k < A; k++) col[k * pw + x] = v[k];                                                  \
        }                                                                                                        \
        for (int k = 0; k < A; k++)                                                                              \
            for (long tj = 0; tj < tw; tj++) {                                                                   \
                T v[A];                                                                                          \
                SUFFIX(input_1d_##R)(v, col + k * pw + 2 * tj, 1);                                               \
                for (int l = 0; l < A; l++) o[(k * A + l) * step + tj] = v[l];                                   \
            }                                                                                                    \
    }
INPUT_ROW(3, 4)
INPUT_ROW(5, 6)
#undef INPUT_ROW

NO_LIBC_CALLS MULTIVERSION void SUFFIX(tether_winograd_input)(T *restrict v, long stride, const T *restrict x,
                                                              const tether_conv_shape *s, long first, long count, T *restrict pad) {
    const long r = s->kernel_h, th = (s->out_h + 1) / 2, tw = (s->out_w + 1) / 2, ph = 2 * th + r - 1, pw = 2 * tw + r - 1;
    const long n = count * th * tw, hw = s->height * s->width, p = s->padding;
    // ph >= out_h + r - 1 = height + 2p, so the padded plane holds every input row at row i + p (columns alike)
    for (long c = 0; c < s->channels; c++)
        for (long b = 0; b < count; b++) {
            const T *plane = x + (c * s->batch + first + b) * hw;
            // the plane inside, zeros around it: each element of `pad` written once
            for (long i = 0; i < ph; i++) {
                T *row = pad + i * pw;
                const long r = i - p;
                if (r < 0 || r >= s->height) {
                    for (long j = 0; j < pw; j++) row[j] = 0;
                    continue;
                }
                for (long j = 0; j < p; j++) row[j] = 0;
                for (long j = 0; j < s->width; j++) row[j + p] = plane[r * s->width + j];
                for (long j = p + s->width; j < pw; j++) row[j] = 0;
            }
            T *out = v + c * n + b * th * tw, *col = pad + ph * pw;
            for (long ti = 0; ti < th; ti++) {
                if (r == 3) SUFFIX(input_row_3)(out + ti * tw, stride, pad + 2 * ti * pw, pw, tw, col);
                else SUFFIX(input_row_5)(out + ti * tw, stride, pad + 2 * ti * pw, pw, tw, col);
            }
        }
}

// Every tile's 2x2 outputs for one output channel: A^T M A over the n tiles at m (matrices `stride`
// apart), into y00, y01, y10, y11 (each n).
#define OUTPUT_TILES(R, A)                                                                                       \
    static inline __attribute__((always_inline)) void SUFFIX(output_tiles_##R)(T *restrict y00, T *restrict y01, T *restrict y10, T *restrict y11, \
                                                const T *restrict m, long stride, long n) {                     \
        for (long t = 0; t < n; t++) {                                                                           \
            T c0[A], c1[A], top[2], bottom[2];                                                                   \
            for (int l = 0; l < A; l++) { /* A^T M, column l */                                                  \
                T y[2];                                                                                          \
                SUFFIX(output_1d_##R)(y, m + l * stride + t, A * stride);                                        \
                c0[l] = y[0];                                                                                    \
                c1[l] = y[1];                                                                                    \
            }                                                                                                    \
            SUFFIX(output_1d_##R)(top, c0, 1);                                                                   \
            SUFFIX(output_1d_##R)(bottom, c1, 1);                                                                \
            y00[t] = top[0];                                                                                     \
            y01[t] = top[1];                                                                                     \
            y10[t] = bottom[0];                                                                                  \
            y11[t] = bottom[1];                                                                                  \
        }                                                                                                        \
    }
OUTPUT_TILES(3, 4)
OUTPUT_TILES(5, 6)
#undef OUTPUT_TILES

NO_LIBC_CALLS MULTIVERSION void SUFFIX(tether_winograd_output)(T *restrict y, const T *restrict m, long stride, const T *restrict bias,
                                                               long outs, const tether_conv_shape *s, long first, long count,
                                                               T *restrict corners) {
    const long th = (s->out_h + 1) / 2, tw = (s->out_w + 1) / 2, n = count * th * tw, oh = s->out_h, ow = s->out_w;
    // corners: each tile's four outputs, (top left, top right, bottom left, bottom right) x n, so that
    // the transform runs over all n tiles of the chunk at once, contiguous in m and in corners
    T *restrict y00 = corners, *restrict y01 = y00 + n, *restrict y10 = y01 + n, *restrict y11 = y10 + n;
    for (long o = 0; o < outs; o++) {
        if (s->kernel_h == 3) SUFFIX(output_tiles_3)(y00, y01, y10, y11, m + o * n, stride, n);
        else SUFFIX(output_tiles_5)(y00, y01, y10, y11, m + o * n, stride, n);
        const T add = bias ? bias[o] : 0;
        const long pairs = ow / 2;  // whole tiles across; an odd width's last tile gives its left column only
        for (long b = 0; b < count; b++) {
            T *plane = y + (o * s->batch + first + b) * oh * ow;
            for (long ti = 0; ti < th; ti++)
                for (long r = 0; r < 2 && 2 * ti + r < oh; r++) {
                    const long t = (b * th + ti) * tw;
                    const T *left = (r ? y10 : y00) + t, *right = (r ? y11 : y01) + t;
                    T *row = plane + (2 * ti + r) * ow;
                    for (long j = 0; j < pairs; j++) {
                        row[2 * j] = left[j] + add;
                        row[2 * j + 1] = right[j] + add;
                    }
                    if (ow & 1) row[ow - 1] = left[pairs] + add;
                }
        }
    }
}

// The output transform fused with the 2x2, stride-2 max pool after it (and an activation after that):
// a tile's 2x2 outputs are one pool window, so each tile yields the window's maximum, then the bias
// (max and a rounded add commute: adding b is nondecreasing), then x > 0 ? x : slope x when `activate`.
// y (outs, B, out_h / 2, out_w / 2) holds the same bits as the convolution, pool and activation one
// after another (the comparisons are the pool kernel's, in its order); an odd side's last tile is the
// row or column the pool drops.
NO_LIBC_CALLS MULTIVERSION void SUFFIX(tether_winograd_output_pooled)(T *restrict y, const T *restrict m, long stride,
                                                                      const T *restrict bias, long outs, const tether_conv_shape *s,
                                                                      long first, long count, T *restrict corners, int activate,
                                                                      T slope) {
    const long th = (s->out_h + 1) / 2, tw = (s->out_w + 1) / 2, n = count * th * tw, ph = s->out_h / 2, pw = s->out_w / 2;
    T *restrict y00 = corners, *restrict y01 = y00 + n, *restrict y10 = y01 + n, *restrict y11 = y10 + n;
    for (long o = 0; o < outs; o++) {
        if (s->kernel_h == 3) SUFFIX(output_tiles_3)(y00, y01, y10, y11, m + o * n, stride, n);
        else SUFFIX(output_tiles_5)(y00, y01, y10, y11, m + o * n, stride, n);
        const T add = bias ? bias[o] : 0;
        for (long b = 0; b < count; b++) {
            T *plane = y + (o * s->batch + first + b) * ph * pw;
            for (long ti = 0; ti < ph; ti++)
                for (long tj = 0; tj < pw; tj++) {
                    const long t = (b * th + ti) * tw + tj;
                    T best = y00[t];
                    best = y01[t] > best ? y01[t] : best;
                    best = y10[t] > best ? y10[t] : best;
                    best = y11[t] > best ? y11[t] : best;
                    T v = best + add;
                    if (activate) v = v > 0 ? v : slope * v;
                    plane[ti * pw + tj] = v;
                }
        }
    }
}
