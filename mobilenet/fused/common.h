/* What the kernels share: vectors of floats with loads and stores of float and bfloat16 values (a
 * bfloat16 is the high half of a float, held as uint16_t), and the split of rows between OpenMP
 * threads. */
#ifndef MOBILENET_FUSED_COMMON_H
#define MOBILENET_FUSED_COMMON_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* Vectors of V floats (explicit, so that the compiler uses the CPU's widest registers whatever its
   vectoriser decides), their bit patterns, and loads and stores of V values of T at any alignment. */
#define VECTORS(V)                                                                                         \
typedef float f##V __attribute__((vector_size(4 * V)));                                                    \
typedef float f##V##u __attribute__((vector_size(4 * V), aligned(4)));                                     \
typedef uint32_t u##V __attribute__((vector_size(4 * V)));                                                 \
typedef uint16_t h##V##u __attribute__((vector_size(2 * V), aligned(2)));                                  \
INLINE f##V load##V##_f32(const float *p) { return *(const f##V##u *)p; }                                  \
INLINE void store##V##_f32(float *p, f##V v) { *(f##V##u *)p = v; }                                        \
INLINE f##V load##V##_bf16(const uint16_t *p) {                                                            \
    return (f##V)(__builtin_convertvector(*(const h##V##u *)p, u##V) << 16);                               \
}                                                                                                          \
INLINE void store##V##_bf16(uint16_t *p, f##V v) { /* round to nearest even, as PyTorch does; NaN stays NaN */ \
    u##V bits = (u##V)v, nan = -((bits & 0x7fffffffu) > 0x7f800000u);                                       \
    u##V rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;                                            \
    *(h##V##u *)p = __builtin_convertvector((rounded & ~nan) | (((bits >> 16) | 0x40u) & nan), h##V##u);    \
}                                                                                                          \
/* where mask (all bits set or none per lane): v, else 0 */                                               \
INLINE f##V keep##V(f##V v, u##V mask) { return (f##V)((u##V)v & mask); }                                  \
/* clamp(z, lo, hi); NaN stays NaN, as torch.clamp */                                                      \
INLINE f##V clamp##V(f##V z, float lo, float hi) {                                                         \
    f##V l = (f##V){0} + lo, h = (f##V){0} + hi;                                                           \
    u##V below = (u##V)(z < l), above = (u##V)(z > h);                                                     \
    return (f##V)(((u##V)z & ~(below | above)) | ((u##V)l & below) | ((u##V)h & above));                   \
}
VECTORS(16)
VECTORS(8)
VECTORS(4)
VECTORS(1)

/* The widest vector the CPU holds in one register, in floats: the kernels' main loops run vectors of
   WIDE floats. Wider vectors than the registers cost twice the registers, and the loops that keep
   taps, windows and sums in registers spill to the stack (on AVX2 vectors of 16 floats ran slower than
   PyTorch's own loops). */
#if defined(__AVX512F__)
#define WIDE 16
#elif defined(__AVX__)
#define WIDE 8
#else
#define WIDE 4 /* SSE, NEON */
#endif
#define CAT_(a, b, c) a##b##c
#define CAT(a, b, c) CAT_(a, b, c) /* CAT(load, WIDE, _f32): load8_f32 where WIDE is 8 */

/* Where the CPU has them, single instructions for two of the above: AVX-512 BF16's conversion (round to
   nearest even, NaN stays NaN; it also flushes values below 2^-126 to zero, where the portable version
   keeps bfloat16's subnormals) and AVX's and AVX-512's min and max (clamp keeps a NaN z: max returns its
   second operand when either is NaN). */
#if defined(__AVX__)
#include <immintrin.h>
#define clamp8 clamp8_avx
INLINE f8 clamp8_avx(f8 z, float lo, float hi) {
    return (f8)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)z));
}
#endif
#if defined(__AVX512F__)
#define clamp16 clamp16_avx512
INLINE f16 clamp16_avx512(f16 z, float lo, float hi) {
    return (f16)_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), (__m512)z));
}
#if defined(__AVX512BF16__)
#define store16_bf16 store16_bf16_avx512
INLINE void store16_bf16_avx512(uint16_t *p, f16 v) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)v));
}
#endif
#endif

/* One value at p[i]. */
INLINE float load_f32(const float *p, int64_t i) { return load1_f32(p + i)[0]; }
INLINE float load_bf16(const uint16_t *p, int64_t i) { return load1_bf16(p + i)[0]; }

/* Items [begin, end) of this thread's share of n. */
static inline void share(int64_t n, int64_t *begin, int64_t *end) {
    int t = omp_get_thread_num(), threads = omp_get_num_threads();
    int64_t chunk = (n + threads - 1) / threads;
    *begin = t * chunk < n ? t * chunk : n;
    *end = *begin + chunk < n ? *begin + chunk : n;
}

#endif
