#pragma once
#include <xxhash.h>
#if defined(__x86_64__)
// XXH3_64bits_dispatch picks the SSE2, AVX2 or AVX-512 loop for the CPU at run time.
#include <xxh_x86dispatch.h>
#endif
