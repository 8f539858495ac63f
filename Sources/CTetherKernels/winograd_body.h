// The Winograd F(2x2, 3x3) kernels for one precision: winograd.c includes this once with T float and
// once with T double. (No include guard, on purpose.)

MULTIVERSION void SUFFIX(tether_winograd_weights)(T *restrict u, const T *restrict w, long outs, long ins, int transposed) {
    for (long o = 0; o < outs; o++)
        for (long i = 0; i < ins; i++) {
            // g: the 3x3 filter from input channel i to output o
            T g[3][3];
            const T *f = transposed ? w + (i * outs + o) * 9 : w + (o * ins + i) * 9;
            for (int r = 0; r < 3; r++)
                for (int s = 0; s < 3; s++) g[r][s] = transposed ? f[(2 - r) * 3 + 2 - s] : f[r * 3 + s];
            T t[4][3];  // G g
            for (int s = 0; s < 3; s++) {
                t[0][s] = g[0][s];
                t[1][s] = (g[0][s] + g[1][s] + g[2][s]) / 2;
                t[2][s] = (g[0][s] - g[1][s] + g[2][s]) / 2;
                t[3][s] = g[2][s];
            }
            for (int r = 0; r < 4; r++) {  // (G g) G^T, row r
                const T e[4] = {t[r][0], (t[r][0] + t[r][1] + t[r][2]) / 2, (t[r][0] - t[r][1] + t[r][2]) / 2, t[r][2]};
                for (int q = 0; q < 4; q++) u[((r * 4 + q) * outs + o) * ins + i] = e[q];
            }
        }
}

NO_LIBC_CALLS MULTIVERSION void SUFFIX(tether_winograd_input)(T *restrict v, long stride, const T *restrict x,
                                                              const tether_conv_shape *s, long first, long count, T *restrict pad) {
    const long th = (s->out_h + 1) / 2, tw = (s->out_w + 1) / 2, ph = 2 * th + 2, pw = 2 * tw + 2;
    const long n = count * th * tw, hw = s->height * s->width, p = s->padding, step = stride;
    // ph >= out_h + 2 = height + 2p, so the padded plane holds every input row at row r + p (columns alike)
    for (long c = 0; c < s->channels; c++)
        for (long b = 0; b < count; b++) {
            const T *plane = x + (c * s->batch + first + b) * hw;
            for (long i = 0; i < ph * pw; i++) pad[i] = 0;
            for (long r = 0; r < s->height; r++)
                for (long q = 0; q < s->width; q++) pad[(r + p) * pw + q + p] = plane[r * s->width + q];
            T *out = v + c * n + b * th * tw;
            for (long ti = 0; ti < th; ti++) {
                const T *r0 = pad + 2 * ti * pw, *r1 = r0 + pw, *r2 = r1 + pw, *r3 = r2 + pw;
                T *o = out + ti * tw;
                for (long tj = 0; tj < tw; tj++) {
                    const long q = 2 * tj;
                    T a[4][4];  // B^T d
                    for (int l = 0; l < 4; l++) {
                        a[0][l] = r0[q + l] - r2[q + l];
                        a[1][l] = r1[q + l] + r2[q + l];
                        a[2][l] = r2[q + l] - r1[q + l];
                        a[3][l] = r1[q + l] - r3[q + l];
                    }
                    for (int k = 0; k < 4; k++) {  // (B^T d) B, row k
                        o[(4 * k + 0) * step + tj] = a[k][0] - a[k][2];
                        o[(4 * k + 1) * step + tj] = a[k][1] + a[k][2];
                        o[(4 * k + 2) * step + tj] = a[k][2] - a[k][1];
                        o[(4 * k + 3) * step + tj] = a[k][1] - a[k][3];
                    }
                }
            }
        }
}

NO_LIBC_CALLS MULTIVERSION void SUFFIX(tether_winograd_output)(T *restrict y, const T *restrict m, long stride, const T *restrict bias,
                                                               long outs, const tether_conv_shape *s, long first, long count,
                                                               T *restrict corners) {
    const long th = (s->out_h + 1) / 2, tw = (s->out_w + 1) / 2, n = count * th * tw, oh = s->out_h, ow = s->out_w;
    // corners: each tile's four outputs, (top left, top right, bottom left, bottom right) x n, so that
    // the transform runs over all n tiles of the chunk at once, contiguous in m and in corners
    T *restrict y00 = corners, *restrict y01 = y00 + n, *restrict y10 = y01 + n, *restrict y11 = y10 + n;
    for (long o = 0; o < outs; o++) {
        const T *mo = m + o * n;
        for (long t = 0; t < n; t++) {
            T c0[4], c1[4];  // A^T M
            for (int l = 0; l < 4; l++) {
                c0[l] = mo[l * stride + t] + mo[(4 + l) * stride + t] + mo[(8 + l) * stride + t];
                c1[l] = mo[(4 + l) * stride + t] - mo[(8 + l) * stride + t] - mo[(12 + l) * stride + t];
            }
            y00[t] = c0[0] + c0[1] + c0[2];
            y01[t] = c0[1] - c0[2] - c0[3];
            y10[t] = c1[0] + c1[1] + c1[2];
            y11[t] = c1[1] - c1[2] - c1[3];
        }
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
