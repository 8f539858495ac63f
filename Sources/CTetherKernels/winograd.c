// Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2016): a stride-1 convolution with an r x r filter (r = 3 or 5) computed in tiles of 2x2 outputs,
// F(2x2, rxr). With a = r + 1, each tile reads an a x a patch d of the zero-padded input and is
//     y = A^T [ (G g G^T) (.) (B^T d B) ] A
// with (.) elementwise over the a^2 positions e. Summed over input channels, position e of every tile
// is one matrix product: M[e] (O, tiles) = U[e] (O, C) V[e] (C, tiles): a^2 multiplies per 2x2
// outputs instead of 4 r^2, 2.25x fewer for 3x3 (16 GEMMs) and 2.78x for 5x5 (36). The transforms are
// additions and multiplies by constants.
//
// F(2x2, 3x3), points 0, 1, -1 and infinity:
//   B^T = | 1  0 -1  0 |    G = | 1    0    0  |    A^T = | 1  1  1  0 |
//         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |        | 0    0    1  |
// F(2x2, 5x5), points 0, 1, -1, 2, -2 and infinity (A^T and G from the points, B^T solved so that the
// product is the correlation, and checked in exact fractions):
//   B^T = | 4  0 -5  0  1  0 |   G = |  1/4   0     0    0     0   |   A^T = | 1  1  1  1  1  0 |
//         | 0 -4 -4  1  1  0 |       | -1/6 -1/6  -1/6 -1/6  -1/6 |           | 0  1 -1  2 -2  1 |
//         | 0  4 -4 -1  1  0 |       | -1/6  1/6  -1/6  1/6  -1/6 |
//         | 0 -2 -1  2  1  0 |       | 1/24  1/12  1/6  1/3   2/3 |
//         | 0  2 -1 -2  1  0 |       | 1/24 -1/12  1/6 -1/3   2/3 |
//         | 0  4  0 -5  0  1 |       |  0    0     0    0     1   |
//
// Layouts: U (a^2, O, C); V (a^2, C, n) and M (a^2, O, n) for n tiles of `count` images, tile t = (b,
// ti, tj) in row-major order, ti < tiles_h = ceil(out_h / 2), tj < tiles_w = ceil(out_w / 2). An odd
// output side's last tile reads zeros past the padded input and its extra outputs are dropped.
#include "tether_kernels.h"

#include "attributes.h"

#define T float
#define SUFFIX(name) name##_f32
#include "winograd_body.h"
#undef T
#undef SUFFIX

#define T double
#define SUFFIX(name) name##_f64
#include "winograd_body.h"
#undef T
#undef SUFFIX
