// Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016): a 3x3, stride-1 convolution computed in tiles of 2x2 outputs. Each tile reads a
// 4x4 patch d of the zero-padded input and is
//     y = A^T [ (G g G^T) (.) (B^T d B) ] A
// with (.) elementwise over the 16 positions e. Summed over input channels, position e of every tile
// is one matrix product: M[e] (O, tiles) = U[e] (O, C) V[e] (C, tiles), 16 GEMMs of 4 multiplies per
// 2x2 outputs in place of 9 per output: 2.25x fewer. The transforms (below) are additions and halvings.
//
//   B^T = | 1  0 -1  0 |    G = | 1    0    0  |    A^T = | 1  1  1  0 |
//         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |        | 0    0    1  |
//
// Layouts: U (16, O, C); V (16, C, n) and M (16, O, n) for n tiles of `count` images, tile t = (b, ti, tj)
// in row-major order, ti < tiles_h = ceil(out_h / 2), tj < tiles_w = ceil(out_w / 2). An odd output
// side's last tile reads zeros past the padded input and its extra outputs are dropped.
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
