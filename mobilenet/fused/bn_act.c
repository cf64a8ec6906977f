/* BatchNorm + activation fused, forward and backward, for channels-last activations.
 *
 * An activation tensor N x C x H x W stored channels-last is a row-major M x C matrix (M = N*H*W),
 * so every kernel walks rows with per-channel constants in vectors along C. Rows are taken R at a
 * time as one wide row of W = R*C values with the constants tiled R times, so that layers with few
 * channels (C = 8 or 16) still run long vector loops instead of paying the loop overhead per row;
 * the last wide row may be shorter (M % R rows). The loops run in explicit vectors of WIDE floats (one
 * register: 16 with AVX-512, 8 with AVX2, 4 otherwise), then one value at a time for what is left of a wide row.
 *
 * PyTorch runs BatchNorm and the activation as separate passes over memory (statistics, normalise,
 * activation; activation backward, two BatchNorm backward passes). Here the forward is two passes
 * (statistics, then normalise + clamp) and the backward two (the channel sums, then the input
 * gradient), with the activation's mask recomputed from the saved input instead of stored, and all
 * per-channel arithmetic (running statistics included) done here rather than as small tensor ops.
 *
 * The activation is a clamp to [lo, hi]: ReLU is [0, inf), ReLU6 [0, 6], none (-inf, inf). Its
 * gradient passes where lo < z < hi, as PyTorch's threshold_backward and hardtanh_backward do.
 * T is float or bfloat16 (uint16_t). Parameters and statistics are float; sums are accumulated in
 * float over blocks of rows and in double across blocks.
 */
#include "common.h"

#define TILE 256   /* values per wide row: R = max(1, TILE / C) rows */
#define BLOCK 16   /* wide rows summed in float before folding into double */

/* The affine map BatchNorm applies per channel: x * scale + shift. */
static void scale_shift(int64_t c, const float *weight, const float *bias, const float *mean, const float *invstd,
                        float *scale, float *shift) {
    for (int64_t j = 0; j < c; j++) {
        scale[j] = weight[j] * invstd[j];
        shift[j] = bias[j] - mean[j] * scale[j];
    }
}

/* `v` (c values) repeated r times into `out` (r*c). */
static void tile(const float *v, int64_t c, int64_t r, float *out) {
    for (int64_t i = 0; i < r; i++) memcpy(out + i * c, v, (size_t)c * sizeof(float));
}

/* The per-channel constants of a pass, each tiled to a wide row. */
typedef struct {
    const float *pivot, *scale, *shift, *mean, *a, *b;
    float lo, hi;
} Constants;

/* dz: dy where the clamp passed the gradient (lo < z < hi, z = v * scale + shift), else 0. */
#define PASSED(V)                                                                                          \
INLINE f##V passed##V(f##V v, f##V dy, f##V scale, f##V shift, f##V lo, f##V hi) {                         \
    f##V z = v * scale + shift;                                                                            \
    return keep##V(dy, (u##V)(z > lo) & (u##V)(z < hi));                                                  \
}
PASSED(16)
PASSED(8)
PASSED(4)
PASSED(1)

/* What each pass does to values [j, j+V) of the wide rows. */
#define ROW_OPS(V, SUFFIX, T)                                                                              \
/* The sums of a pass over values [j, j+V) of u (<= 4) wide rows from x (and dy; stride w), added into   \
   the float sums s0, s1: the statistics' (x - pivot and its square) or the backward's (dz and dz * (x - mean); the \
   caller multiplies the latter by invstd). */                                                            \
INLINE void sums##V##_##SUFFIX(int64_t j, int u, int grads, const Constants *k, const T *x, const T *dy,   \
                               int64_t w, float *s0, float *s1) {                                          \
    f##V a = {0}, b = {0};                                                                                 \
    if (grads) {                                                                                           \
        f##V scale = load##V##_f32(k->scale + j), shift = load##V##_f32(k->shift + j);                     \
        f##V mean = load##V##_f32(k->mean + j), l = (f##V){0} + k->lo, h = (f##V){0} + k->hi;              \
        for (int q = 0; q < u; q++) {                                                                      \
            f##V v = load##V##_##SUFFIX(x + q * w + j);                                                    \
            f##V g = passed##V(v, load##V##_##SUFFIX(dy + q * w + j), scale, shift, l, h);                 \
            a += g;                                                                                        \
            b += g * (v - mean);                                                                           \
        }                                                                                                  \
    } else {                                                                                               \
        f##V pivot = load##V##_f32(k->pivot + j);                                                          \
        for (int q = 0; q < u; q++) {                                                                      \
            f##V v = load##V##_##SUFFIX(x + q * w + j) - pivot;                                            \
            a += v;                                                                                        \
            b += v * v;                                                                                    \
        }                                                                                                  \
    }                                                                                                      \
    store##V##_f32(s0 + j, load##V##_f32(s0 + j) + a);                                                     \
    store##V##_f32(s1 + j, load##V##_f32(s1 + j) + b);                                                     \
}                                                                                                          \
/* y = clamp(x * scale + shift, lo, hi) */                                                                 \
INLINE void apply##V##_##SUFFIX(int64_t j, const Constants *k, const T *x, T *y) {                         \
    f##V z = load##V##_##SUFFIX(x + j) * load##V##_f32(k->scale + j) + load##V##_f32(k->shift + j);        \
    store##V##_##SUFFIX(y + j, clamp##V(z, k->lo, k->hi));                                                 \
}                                                                                                          \
/* dx = scale * dz + a * x + b */                                                                          \
INLINE void input##V##_##SUFFIX(int64_t j, const Constants *k, const T *x, const T *dy, T *dx) {           \
    f##V v = load##V##_##SUFFIX(x + j), scale = load##V##_f32(k->scale + j);                               \
    f##V g = passed##V(v, load##V##_##SUFFIX(dy + j), scale, load##V##_f32(k->shift + j),                  \
                       (f##V){0} + k->lo, (f##V){0} + k->hi);                                              \
    store##V##_##SUFFIX(dx + j, scale * g + load##V##_f32(k->a + j) * v + load##V##_f32(k->b + j));        \
}

/* FN over the n values of a wide row: vectors of WIDE (common.h), then one at a time. */
#define EACH(FN, SUFFIX, n, ...)                                                                           \
    {                                                                                                      \
        int64_t j_ = 0;                                                                                    \
        for (; j_ + WIDE <= (n); j_ += WIDE) CAT(FN, WIDE, _##SUFFIX)(j_, __VA_ARGS__);                    \
        for (; j_ < (n); j_++) FN##1_##SUFFIX(j_, __VA_ARGS__);                                            \
    }

/* The values in wide row i of an M x C matrix (w = R*C a wide row, total = M*C). */
static inline int64_t row_values(int64_t i, int64_t w, int64_t total) {
    return total - i * w < w ? total - i * w : w;
}

#define DEFINE_KERNELS(SUFFIX, T)                                                                          \
ROW_OPS(16, SUFFIX, T)                                                                                     \
ROW_OPS(8, SUFFIX, T)                                                                                      \
ROW_OPS(4, SUFFIX, T)                                                                                      \
ROW_OPS(1, SUFFIX, T)                                                                                      \
/* Channel sums of two quantities (see sums16) over all m rows, into out0 and out1 (c each). Each thread \
   streams its wide rows in memory order, four at a time, into a float row of sums that stays in the L1   \
   cache, folded into double every BLOCK wide rows. (Column by column, with the sums in registers and    \
   the rows read with a stride, ran at 0.6x PyTorch's own sum over the same bytes.) */                    \
static void channel_sums_##SUFFIX(int grads, const Constants *k, const T *x, const T *dy, int64_t m,        \
                                  int64_t c, int64_t r, double *out0, double *out1) {                      \
    int threads = omp_get_max_threads();                                                                   \
    int64_t w = r * c, total = m * c, rows = (m + r - 1) / r;                                              \
    double *partial = calloc((size_t)(2 * threads * w), sizeof(double));                                   \
    float *sums = malloc((size_t)(2 * threads * w) * sizeof(float));                                       \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        int64_t begin, end;                                                                                \
        share(rows, &begin, &end);                                                                         \
        double *d0 = partial + 2 * omp_get_thread_num() * w, *d1 = d0 + w;                                 \
        float *s0 = sums + 2 * omp_get_thread_num() * w, *s1 = s0 + w;                                     \
        for (int64_t block = begin; block < end; block += BLOCK) {                                         \
            int64_t stop = block + BLOCK < end ? block + BLOCK : end;                                      \
            int64_t full = row_values(stop - 1, w, total) < w ? stop - 1 : stop; /* the last may be short */ \
            memset(s0, 0, (size_t)(2 * w) * sizeof(float));                                               \
            for (int64_t i = block; i < full; i += 4) {                                                    \
                int u = full - i < 4 ? (int)(full - i) : 4;                                                \
                EACH(sums, SUFFIX, w, u, grads, k, x + i * w, dy ? dy + i * w : NULL, w, s0, s1)           \
            }                                                                                              \
            if (full < stop)                                                                               \
                EACH(sums, SUFFIX, row_values(full, w, total), 1, grads, k, x + full * w,                  \
                     dy ? dy + full * w : NULL, w, s0, s1)                                                 \
            for (int64_t j = 0; j < w; j++) { d0[j] += s0[j]; d1[j] += s1[j]; }                           \
        }                                                                                                  \
    }                                                                                                      \
    for (int64_t j = 0; j < c; j++) { out0[j] = 0.0; out1[j] = 0.0; }                                      \
    for (int t = 0; t < threads; t++)                                                                      \
        for (int64_t j = 0; j < w; j++) {                                                                  \
            out0[j % c] += partial[2 * t * w + j];                                                         \
            out1[j % c] += partial[(2 * t + 1) * w + j];                                                   \
        }                                                                                                  \
    free(sums);                                                                                            \
    free(partial);                                                                                         \
}                                                                                                          \
                                                                                                           \
/* Forward. Training: batch statistics (saved to mean and invstd; the running statistics, if given,       \
   move towards them by `momentum`, the variance unbiased, as nn.BatchNorm2d does). Otherwise the        \
   running statistics are used (and saved the same way for the backward pass). */                         \
void bn_act_forward_##SUFFIX(const T *x, T *y, int64_t m, int64_t c, const float *weight, const float *bias, \
                             float *running_mean, float *running_var, int training, float momentum,          \
                             float eps, float lo, float hi, float *mean, float *invstd) {                   \
    int64_t r = c < TILE ? TILE / c : 1, w = r * c, total = m * c;                                         \
    float *pivot = malloc((size_t)(3 * w) * sizeof(float)), *scale = pivot + w, *shift = scale + w;        \
    Constants k = {pivot, scale, shift, NULL, NULL, NULL, lo, hi};                                    \
    if (training) {                                                                                        \
        /* sums of x - pivot, pivot = the first row: the variance as E[d^2] - E[d]^2 does not cancel          \
           catastrophically when the mean is large against the spread (a shifted-data variance) */         \
        double *sum = malloc((size_t)(2 * c) * sizeof(double)), *sq = sum + c;                             \
        for (int64_t j = 0; j < c; j++) pivot[j] = load_##SUFFIX(x, j);                                    \
        tile(pivot, c, r, pivot);                                                                          \
        channel_sums_##SUFFIX(0, &k, x, NULL, m, c, r, sum, sq);                                           \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            double shift_mean = sum[j] / m, var = sq[j] / m - shift_mean * shift_mean;                     \
            double mu = pivot[j] + shift_mean;                                                             \
            var = var > 0 ? var : 0;                                                                       \
            mean[j] = (float)mu;                                                                           \
            invstd[j] = (float)(1.0 / sqrt(var + eps));                                                    \
            if (running_mean) {                                                                            \
                running_mean[j] = (float)((1 - momentum) * running_mean[j] + momentum * mu);               \
                running_var[j] = (float)((1 - momentum) * running_var[j]                                   \
                                         + momentum * var * m / (m > 1 ? m - 1 : 1));                      \
            }                                                                                              \
        }                                                                                                  \
        free(sum);                                                                                         \
    } else {                                                                                               \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            mean[j] = running_mean[j];                                                                     \
            invstd[j] = (float)(1.0 / sqrt((double)running_var[j] + eps));                                 \
        }                                                                                                  \
    }                                                                                                      \
    scale_shift(c, weight, bias, mean, invstd, scale, shift);                                              \
    tile(scale, c, r, scale);                                                                              \
    tile(shift, c, r, shift);                                                                              \
    if (y) /* (without y: the statistics only, for a depthwise layer that normalises as it reads) */       \
        _Pragma("omp parallel")                                                                            \
        {                                                                                                  \
            int64_t begin, end;                                                                            \
            share((m + r - 1) / r, &begin, &end);                                                          \
            for (int64_t i = begin; i < end; i++)                                                          \
                EACH(apply, SUFFIX, row_values(i, w, total), &k, x + i * w, y + i * w)                     \
        }                                                                                                  \
    free(pivot);                                                                                           \
}                                                                                                          \
                                                                                                           \
/* Backward: dbeta = sum(dz), dgamma = sum(dz * xhat), where dz = dy where lo < z < hi (else 0),          \
   z = x * scale + shift as in the forward pass, xhat = (x - mean) * invstd; and, if dx is given,          \
   dx = scale * (dz - sum(dz) / m - xhat * sum(dz * xhat) / m) in training, scale * dz otherwise,         \
   computed as scale * dz + a * x + b per channel. */                                                      \
void bn_act_backward_##SUFFIX(const T *dy, const T *x, T *dx, int64_t m, int64_t c, const float *weight,    \
                              const float *bias, const float *mean, const float *invstd, int training,      \
                              float lo, float hi, float *dgamma, float *dbeta) {                            \
    int64_t r = c < TILE ? TILE / c : 1, w = r * c, total = m * c;                                         \
    float *scale = malloc((size_t)(5 * w) * sizeof(float)), *shift = scale + w, *mu = shift + w;           \
    float *a = mu + w, *b = a + w;                                                                         \
    Constants k = {NULL, scale, shift, mu, a, b, lo, hi};                                                  \
    scale_shift(c, weight, bias, mean, invstd, scale, shift);                                              \
    memcpy(mu, mean, (size_t)c * sizeof(float));                                                           \
    tile(scale, c, r, scale); tile(shift, c, r, shift); tile(mu, c, r, mu);                                \
    double *sum_dz = malloc((size_t)(2 * c) * sizeof(double)), *sum_dzx = sum_dz + c;                      \
    channel_sums_##SUFFIX(1, &k, x, dy, m, c, r, sum_dz, sum_dzx);                                         \
    for (int64_t j = 0; j < c; j++) {                                                                      \
        sum_dzx[j] *= invstd[j];                                                                           \
        dbeta[j] = (float)sum_dz[j];                                                                       \
        dgamma[j] = (float)sum_dzx[j];                                                                     \
    }        \
    if (dx) {                                                                                              \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            a[j] = training ? (float)(-scale[j] * invstd[j] * sum_dzx[j] / m) : 0.f;                       \
            b[j] = training ? (float)(-scale[j] * sum_dz[j] / m) - a[j] * mean[j] : 0.f;                   \
        }                                                                                                  \
        tile(a, c, r, a); tile(b, c, r, b);                                                                \
        _Pragma("omp parallel")                                                                            \
        {                                                                                                  \
            int64_t begin, end;                                                                            \
            share((m + r - 1) / r, &begin, &end);                                                          \
            for (int64_t i = begin; i < end; i++)                                                          \
                EACH(input, SUFFIX, row_values(i, w, total), &k, x + i * w, dy + i * w, dx + i * w)        \
        }                                                                                                  \
    }                                                                                                      \
    free(sum_dz);                                                                                          \
    free(scale);                                                                                           \
}

/* The affine map of a BatchNorm with these statistics (c channels), as the kernels above compute it: for
   a depthwise layer that applies it as it reads its input (depthwise.c). */
void bn_scale_shift(int64_t c, const float *weight, const float *bias, const float *mean, const float *invstd,
                    float *scale, float *shift) {
    scale_shift(c, weight, bias, mean, invstd, scale, shift);
}

DEFINE_KERNELS(f32, float)
DEFINE_KERNELS(bf16, uint16_t)
