/* BatchNorm + activation fused, forward and backward, for channels-last activations.
 *
 * An activation tensor N x C x H x W stored channels-last is a row-major M x C matrix (M = N*H*W),
 * so every kernel walks rows with per-channel constants in vectors along C. Rows are taken R at a
 * time as one wide row of W = R*C values with the constants tiled R times, so that layers with few
 * channels (C = 8 or 16) still run long vector loops instead of paying the loop overhead per row.
 *
 * PyTorch runs BatchNorm and the activation as separate passes over memory (statistics, normalise,
 * activation; activation backward, two BatchNorm backward passes). Here the forward is two passes
 * (statistics, then normalise + clamp) and the backward two (the channel sums, then the input
 * gradient), with the activation's mask recomputed from the saved input instead of stored, and all
 * per-channel arithmetic (running statistics included) done here rather than as small tensor ops.
 *
 * The activation is a clamp to [lo, hi]: ReLU is [0, inf), ReLU6 [0, 6], none (-inf, inf). Its
 * gradient passes where lo < z < hi, as PyTorch's threshold_backward and hardtanh_backward do.
 * T is float or bfloat16 (uint16_t, the high half of a float). Parameters and statistics are
 * float; sums are accumulated in float over blocks of rows and in double across blocks.
 */
#include "common.h"

#define TILE 256   /* values per wide row: R = max(1, TILE / C) rows */
#define BLOCK 16   /* wide rows summed in float before folding into double */

/* `v` (c values) repeated r times into `out` (r*c). */
static void tile(const float *v, int64_t c, int64_t r, float *out) {
    for (int64_t i = 0; i < r; i++) memcpy(out + i * c, v, (size_t)c * sizeof(float));
}

/* Channel sums of two quantities over all m rows: per-thread double partials of width w, folded
   into c channels (out0, out1). SUM_ROWS(begin, end, s0, s1) adds wide rows [begin, end) into the
   float vectors s0, s1 (width w); the tail rows (m % r) are added by the first thread. */
#define CHANNEL_SUMS(m, c, w, r, out0, out1, SUM_WIDE, SUM_TAIL)                                          \
    {                                                                                                      \
        int threads_ = omp_get_max_threads();                                                              \
        double *partial_ = calloc((size_t)(2 * threads_ * (w)), sizeof(double));                          \
        int64_t wide_ = (m) / (r);                                                                         \
        _Pragma("omp parallel")                                                                            \
        {                                                                                                  \
            int64_t begin_, end_;                                                                          \
            share(wide_, &begin_, &end_);                                                                  \
            double *d0_ = partial_ + 2 * omp_get_thread_num() * (w), *d1_ = d0_ + (w);                     \
            float s0[w], s1[w]; /* w <= max(TILE, c) */                                                              \
            for (int64_t block_ = begin_; block_ < end_; block_ += BLOCK) {                                \
                int64_t stop_ = block_ + BLOCK < end_ ? block_ + BLOCK : end_;                             \
                for (int64_t j = 0; j < (w); j++) { s0[j] = 0.f; s1[j] = 0.f; }                            \
                SUM_WIDE(block_, stop_)                                                                    \
                for (int64_t j = 0; j < (w); j++) { d0_[j] += s0[j]; d1_[j] += s1[j]; }                    \
            }                                                                                              \
            if (omp_get_thread_num() == 0 && wide_ * (r) < (m)) {                                          \
                for (int64_t j = 0; j < (w); j++) { s0[j] = 0.f; s1[j] = 0.f; }                            \
                SUM_TAIL(wide_ * (r), (m))                                                                 \
                for (int64_t j = 0; j < (c); j++) { d0_[j] += s0[j]; d1_[j] += s1[j]; }                    \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t j = 0; j < (c); j++) { out0[j] = 0.0; out1[j] = 0.0; }                                \
        for (int t_ = 0; t_ < threads_; t_++)                                                              \
            for (int64_t j = 0; j < (w); j++) {                                                            \
                out0[j % (c)] += partial_[2 * t_ * (w) + j];                                               \
                out1[j % (c)] += partial_[(2 * t_ + 1) * (w) + j];                                         \
            }                                                                                              \
        free(partial_);                                                                                    \
    }

#define DEFINE_KERNELS(SUFFIX, T, LOAD, STORE)                                                             \
/* y = clamp(x * scale + shift, lo, hi), scale and shift tiled to w = r*c. */                              \
static void apply_##SUFFIX(const T *x, T *y, int64_t m, int64_t c, int64_t r, const float *scale,           \
                           const float *shift, float lo, float hi) {                                       \
    int64_t w = r * c, total = m * c;                                                                      \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        int64_t begin, end;                                                                                \
        share(m / r, &begin, &end);                                                                        \
        for (int64_t i = begin; i < end; i++) {                                                            \
            const T *in = x + i * w;                                                                       \
            T *out = y + i * w;                                                                            \
            _Pragma("omp simd")                                                                            \
            for (int64_t j = 0; j < w; j++) {                                                              \
                float z = LOAD(in, j) * scale[j] + shift[j];                                               \
                z = z < lo ? lo : z;                                                                       \
                STORE(out, j, z > hi ? hi : z);                                                            \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    for (int64_t i = (m / r) * w; i < total; i++) { /* tail rows */                                       \
        float z = LOAD(x, i) * scale[i % c] + shift[i % c];                                                \
        z = z < lo ? lo : z;                                                                               \
        STORE(y, i, z > hi ? hi : z);                                                                      \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* Forward. Training: batch statistics (saved to mean and invstd; the running statistics, if given,       \
   move towards them by `momentum`, the variance unbiased, as nn.BatchNorm2d does). Otherwise the        \
   running statistics are used (and saved the same way for the backward pass). */                         \
void bn_act_forward_##SUFFIX(const T *x, T *y, int64_t m, int64_t c, const float *weight, const float *bias, \
                             float *running_mean, float *running_var, int training, float momentum,          \
                             float eps, float lo, float hi, float *mean, float *invstd) {                   \
    int64_t r = c < TILE ? TILE / c : 1, w = r * c;                                                        \
    if (training) {                                                                                        \
        /* sums of x - pivot, pivot = the first row: the variance as E[d^2] - E[d]^2 does not cancel          \
           catastrophically when the mean is large against the spread (a shifted-data variance) */         \
        double *sum = malloc((size_t)(2 * c) * sizeof(double)), *sq = sum + c;                             \
        float *pivot = malloc((size_t)w * sizeof(float));                                                  \
        for (int64_t j = 0; j < c; j++) pivot[j] = LOAD(x, j);                                             \
        tile(pivot, c, r, pivot);                                                                          \
        CHANNEL_SUMS(m, c, w, r, sum, sq,                                                                  \
            SUM_X_WIDE, SUM_X_TAIL)                                                                        \
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
        free(pivot);                                                                                       \
        free(sum);                                                                                         \
    } else {                                                                                               \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            mean[j] = running_mean[j];                                                                     \
            invstd[j] = (float)(1.0 / sqrt((double)running_var[j] + eps));                                 \
        }                                                                                                  \
    }                                                                                                      \
    float *scale = malloc((size_t)(2 * w) * sizeof(float)), *shift = scale + w;                            \
    for (int64_t j = 0; j < c; j++) { scale[j] = weight[j] * invstd[j]; shift[j] = bias[j] - mean[j] * scale[j]; } \
    tile(scale, c, r, scale);                                                                              \
    tile(shift, c, r, shift);                                                                              \
    apply_##SUFFIX(x, y, m, c, r, scale, shift, lo, hi);                                                   \
    free(scale);                                                                                           \
}                                                                                                          \
                                                                                                           \
/* Backward: dbeta = sum(dz), dgamma = sum(dz * xhat), where dz = dy where lo < z < hi (else 0),          \
   z = x * scale + shift as in the forward pass, xhat = (x - mean) * invstd; and, if dx is given,          \
   dx = scale * (dz - sum(dz) / m - xhat * sum(dz * xhat) / m) in training, scale * dz otherwise,         \
   computed as k * dz + a * x + b per channel. */                                                          \
void bn_act_backward_##SUFFIX(const T *dy, const T *x, T *dx, int64_t m, int64_t c, const float *weight,    \
                              const float *bias, const float *mean, const float *invstd, int training,      \
                              float lo, float hi, float *dgamma, float *dbeta) {                            \
    int64_t r = c < TILE ? TILE / c : 1, w = r * c;                                                        \
    float *scale = malloc((size_t)(6 * w) * sizeof(float)), *shift = scale + w, *mu = shift + w;           \
    float *is = mu + w, *a = is + w, *b = a + w;                                                           \
    for (int64_t j = 0; j < c; j++) {                                                                      \
        scale[j] = weight[j] * invstd[j];                                                                  \
        shift[j] = bias[j] - mean[j] * scale[j];                                                           \
        mu[j] = mean[j];                                                                                   \
        is[j] = invstd[j];                                                                                 \
    }                                                                                                      \
    tile(scale, c, r, scale); tile(shift, c, r, shift); tile(mu, c, r, mu); tile(is, c, r, is);            \
    double *sum_dz = malloc((size_t)(2 * c) * sizeof(double)), *sum_dzx = sum_dz + c;                      \
    CHANNEL_SUMS(m, c, w, r, sum_dz, sum_dzx, SUM_G_WIDE, SUM_G_TAIL)                                      \
    for (int64_t j = 0; j < c; j++) { dbeta[j] = (float)sum_dz[j]; dgamma[j] = (float)sum_dzx[j]; }        \
    if (dx) {                                                                                              \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            float k = scale[j];                                                                            \
            a[j] = training ? (float)(-k * invstd[j] * sum_dzx[j] / m) : 0.f;                              \
            b[j] = training ? (float)(-k * sum_dz[j] / m) - a[j] * mean[j] : 0.f;                          \
        }                                                                                                  \
        tile(a, c, r, a); tile(b, c, r, b);                                                                \
        int64_t total = m * c;                                                                             \
        _Pragma("omp parallel")                                                                            \
        {                                                                                                  \
            int64_t begin, end;                                                                            \
            share(m / r, &begin, &end);                                                                    \
            for (int64_t i = begin; i < end; i++) {                                                        \
                const T *xr = x + i * w, *gr = dy + i * w;                                                 \
                T *out = dx + i * w;                                                                       \
                _Pragma("omp simd")                                                                        \
                for (int64_t j = 0; j < w; j++) {                                                          \
                    float v = LOAD(xr, j), z = v * scale[j] + shift[j];                                    \
                    float g = (z > lo && z < hi) ? LOAD(gr, j) : 0.f;                                      \
                    STORE(out, j, scale[j] * g + a[j] * v + b[j]);                                         \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t i = (m / r) * w; i < total; i++) {                                                   \
            int64_t j = i % c;                                                                             \
            float v = LOAD(x, i), z = v * scale[j] + shift[j];                                             \
            float g = (z > lo && z < hi) ? LOAD(dy, i) : 0.f;                                              \
            STORE(dx, i, scale[j] * g + a[j] * v + b[j]);                                                  \
        }                                                                                                  \
    }                                                                                                      \
    free(sum_dz);                                                                                          \
    free(scale);                                                                                           \
}

/* The sums' inner loops: x and x*x for the statistics; dz and dz*xhat for the backward pass. */
#define SUM_X_WIDE(begin, end)                                                                             \
    for (int64_t i = begin; i < end; i++) {                                                                \
        const T_ *in = x + i * w;                                                                          \
        _Pragma("omp simd")                                                                                \
        for (int64_t j = 0; j < w; j++) { float v = LOAD_(in, j) - pivot[j]; s0[j] += v; s1[j] += v * v; } \
    }
#define SUM_X_TAIL(begin, end)                                                                             \
    for (int64_t i = begin; i < end; i++)                                                                  \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            float v = LOAD_(x, i * c + j) - pivot[j];                                                      \
            s0[j] += v;                                                                                    \
            s1[j] += v * v;                                                                                \
        }
#define SUM_G_WIDE(begin, end)                                                                             \
    for (int64_t i = begin; i < end; i++) {                                                                \
        const T_ *xr = x + i * w, *gr = dy + i * w;                                                        \
        _Pragma("omp simd")                                                                                \
        for (int64_t j = 0; j < w; j++) {                                                                  \
            float v = LOAD_(xr, j), z = v * scale[j] + shift[j];                                           \
            float g = (z > lo && z < hi) ? LOAD_(gr, j) : 0.f;                                            \
            s0[j] += g;                                                                                    \
            s1[j] += g * ((v - mu[j]) * is[j]);                                                            \
        }                                                                                                  \
    }
#define SUM_G_TAIL(begin, end)                                                                             \
    for (int64_t i = begin; i < end; i++)                                                                  \
        for (int64_t j = 0; j < c; j++) {                                                                  \
            float v = LOAD_(x, i * c + j), z = v * scale[j] + shift[j];                                    \
            float g = (z > lo && z < hi) ? LOAD_(dy, i * c + j) : 0.f;                                     \
            s0[j] += g;                                                                                    \
            s1[j] += g * ((v - mu[j]) * is[j]);                                                            \
        }

#define T_ float
#define LOAD_ load_f32
DEFINE_KERNELS(f32, float, load_f32, store_f32)
#undef T_
#undef LOAD_
#define T_ uint16_t
#define LOAD_ load_bf16
DEFINE_KERNELS(bf16, uint16_t, load_bf16, store_bf16)
