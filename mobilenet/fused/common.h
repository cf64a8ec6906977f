/* What the kernels share: bfloat16 loads and stores (a bfloat16 is the high half of a float, held
 * as uint16_t) and the split of rows between OpenMP threads. */
#ifndef MOBILENET_FUSED_COMMON_H
#define MOBILENET_FUSED_COMMON_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float load_f32(const float *p, int64_t i) { return p[i]; }
static inline void store_f32(float *p, int64_t i, float v) { p[i] = v; }
static inline float load_bf16(const uint16_t *p, int64_t i) {
    uint32_t bits = (uint32_t)p[i] << 16;
    float v;
    memcpy(&v, &bits, 4);
    return v;
}
static inline void store_bf16(uint16_t *p, int64_t i, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) { p[i] = (uint16_t)((bits >> 16) | 0x40); return; } /* NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even, as PyTorch does */
    p[i] = (uint16_t)(bits >> 16);
}

/* Items [begin, end) of this thread's share of n. */
static inline void share(int64_t n, int64_t *begin, int64_t *end) {
    int t = omp_get_thread_num(), threads = omp_get_num_threads();
    int64_t chunk = (n + threads - 1) / threads;
    *begin = t * chunk < n ? t * chunk : n;
    *end = *begin + chunk < n ? *begin + chunk : n;
}

#endif
