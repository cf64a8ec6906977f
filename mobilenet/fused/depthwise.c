/* A depthwise convolution's forward pass and both gradients (input and weight) for channels-last activations.
 *
 * oneDNN runs the depthwise backward pass slowly on some CPUs and dtypes (on a Xeon with AMX, the
 * bfloat16 input gradient of a stride-2 layer falls back to a path about 30x slower than fp32's), and
 * a depthwise layer is few FLOPs over large activations: memory-bound work. Here each pass works
 * a row of pixels at a time. The rows it reads are first spread into float rows with the zero padding
 * written out (and, for the input gradient of a strided layer, zeros between the pixels: it is then a
 * stride-1 convolution with the kernel flipped), each kept per thread while neighbouring rows need it,
 * so the inner loops have no edge cases and no conversions. The channels go in vectors of WIDE (one
 * register, common.h), then narrower ones, with the taps' weights and the sums in registers; along a
 * row, 3-wide kernels keep a window of three pixels in registers, so each pixel is loaded once.
 *
 * Layouts: x and dx N x H x W x C, dy N x OH x OW x C (channels-last), the weight and its gradient
 * KH x KW x C (tap-major, fp32). Output pixel (o, q) sees input pixel (o*sh - ph + a, q*sw - pw + e)
 * through tap (a, e); pixels outside the input are zeros (zero padding). T is float or bfloat16;
 * every sum is in float, the weight gradient's across rows in double.
 */
#include "common.h"

#ifndef MAX_TAPS /* the largest kernel's taps: given by the build (-DMAX_TAPS, mobilenet/fused/library.py), */
#error "MAX_TAPS must be defined" /* whose modules send larger kernels to PyTorch */
#endif
#define FOLD 8      /* output rows the weight gradient sums in float before adding into double */

/* Channels [k, k+V) of one row of a convolution over rows of padded pixels: pixel q sums, over the rows
   r and the taps e, rows[r]'s pixel q*sw + e times taps[r]'s weight e (at taps[r] + e*c). The forward
   pass is this over the padded input rows; the input gradient, over the spread dy rows (below) with
   each kernel row reversed. */
#define CONV_ROW(V, SUFFIX, T)                                                                             \
INLINE void conv_row##V##_##SUFFIX(float *const *rows, const float *const *taps, int64_t n_rows, T *out,     \
                                   int64_t k, int64_t c, int64_t ow, int64_t kw, int64_t sw) {              \
    f##V weights[MAX_TAPS];                                                                                \
    for (int64_t r = 0; r < n_rows; r++)                                                                   \
        for (int64_t e = 0; e < kw; e++) weights[r * kw + e] = load##V##_f32(taps[r] + e * c + k);         \
    if (kw == 3 && sw == 1) { /* a window of three pixels slides along each row: one load each */        \
        f##V p0[MAX_TAPS], p1[MAX_TAPS];                                                                   \
        for (int64_t r = 0; r < n_rows; r++) {                                                             \
            p0[r] = load##V##_f32(rows[r] + k);                                                            \
            p1[r] = load##V##_f32(rows[r] + c + k);                                                        \
        }                                                                                                  \
        for (int64_t q = 0; q < ow; q++) {                                                                 \
            f##V acc = {0};                                                                                \
            for (int64_t r = 0; r < n_rows; r++) {                                                         \
                f##V p2 = load##V##_f32(rows[r] + (q + 2) * c + k);                                        \
                acc += p0[r] * weights[r * 3] + p1[r] * weights[r * 3 + 1] + p2 * weights[r * 3 + 2];      \
                p0[r] = p1[r];                                                                             \
                p1[r] = p2;                                                                                \
            }                                                                                              \
            store##V##_##SUFFIX(out + q * c + k, acc);                                                     \
        }                                                                                                  \
    } else                                                                                                 \
        for (int64_t q = 0; q < ow; q++) {                                                                 \
            f##V acc = {0};                                                                                \
            for (int64_t r = 0; r < n_rows; r++)                                                           \
                for (int64_t e = 0; e < kw; e++)                                                           \
                    acc += load##V##_f32(rows[r] + (q * sw + e) * c + k) * weights[r * kw + e];            \
            store##V##_##SUFFIX(out + q * c + k, acc);                                                     \
        }                                                                                                  \
}

/* The weight gradient of channels [k, k+V) from one output row g, added into s (taps x c): the padded
   input rows xp[a] (below) hold the pixel that output column q sees through tap (a, e) at q*sw + e. */
#define WEIGHT_ROW(V, SUFFIX, T)                                                                           \
INLINE void weight_row##V##_##SUFFIX(const T *g, float *const *xp, float *s, int64_t k, int64_t c,          \
                                     int64_t ow, int64_t kh, int64_t kw, int64_t sw) {                      \
    f##V acc[MAX_TAPS];                                                                                    \
    for (int64_t t = 0; t < kh * kw; t++) acc[t] = (f##V){0};                                              \
    if (kh == 3 && kw == 3 && sw == 1) { /* a window of three pixels slides along each row: one load each */ \
        f##V x0[3], x1[3];                                                                                 \
        for (int64_t a = 0; a < 3; a++) {                                                                  \
            x0[a] = load##V##_f32(xp[a] + k);                                                              \
            x1[a] = load##V##_f32(xp[a] + c + k);                                                          \
        }                                                                                                  \
        for (int64_t q = 0; q < ow; q++) {                                                                 \
            f##V dy = load##V##_##SUFFIX(g + q * c + k);                                                   \
            for (int64_t a = 0; a < 3; a++) {                                                              \
                f##V x2 = load##V##_f32(xp[a] + (q + 2) * c + k);                                          \
                acc[a * 3] += dy * x0[a];                                                                  \
                acc[a * 3 + 1] += dy * x1[a];                                                              \
                acc[a * 3 + 2] += dy * x2;                                                                 \
                x0[a] = x1[a];                                                                             \
                x1[a] = x2;                                                                                \
            }                                                                                              \
        }                                                                                                  \
    } else                                                                                                 \
        for (int64_t q = 0; q < ow; q++) {                                                                 \
            f##V dy = load##V##_##SUFFIX(g + q * c + k);                                                   \
            for (int64_t a = 0; a < kh; a++)                                                               \
                for (int64_t e = 0; e < kw; e++)                                                           \
                    acc[a * kw + e] += dy * load##V##_f32(xp[a] + (q * sw + e) * c + k);                   \
        }                                                                                                  \
    for (int64_t t = 0; t < kh * kw; t++) store##V##_f32(s + t * c + k, load##V##_f32(s + t * c + k) + acc[t]); \
}

/* Channel blocks of WIDE (common.h: one register), then of 8 and 4 where narrower, then 1. */
#define BLOCKS(FN, SUFFIX, ...)                                                                            \
    {                                                                                                      \
        int64_t k = 0;                                                                                     \
        if (WIDE >= 16) for (; k + 16 <= c; k += 16) FN##16_##SUFFIX(__VA_ARGS__);                         \
        if (WIDE >= 8) for (; k + 8 <= c; k += 8) FN##8_##SUFFIX(__VA_ARGS__);                             \
        for (; k + 4 <= c; k += 4) FN##4_##SUFFIX(__VA_ARGS__);                                            \
        for (; k < c; k++) FN##1_##SUFFIX(__VA_ARGS__);                                                    \
    }

/* conv_row over the channel blocks, with the common shapes as constants (the taps' weights then stay in
   registers): 3-wide kernels over 1, 2 or 3 rows at stride 1, and 3 rows at stride 2. */
#define CONV_ROWS(SUFFIX, rows, taps, n_rows, out, c, ow, kw, sw)                                         \
    if ((kw) == 3 && (sw) == 1 && (n_rows) == 3)                                                           \
        BLOCKS(conv_row, SUFFIX, rows, taps, 3, out, k, c, ow, 3, 1)                                       \
    else if ((kw) == 3 && (sw) == 1 && (n_rows) == 2)                                                      \
        BLOCKS(conv_row, SUFFIX, rows, taps, 2, out, k, c, ow, 3, 1)                                       \
    else if ((kw) == 3 && (sw) == 1 && (n_rows) == 1)                                                      \
        BLOCKS(conv_row, SUFFIX, rows, taps, 1, out, k, c, ow, 3, 1)                                       \
    else if ((kw) == 3 && (sw) == 2 && (n_rows) == 3)                                                      \
        BLOCKS(conv_row, SUFFIX, rows, taps, 3, out, k, c, ow, 3, 2)                                       \
    else                                                                                                   \
        BLOCKS(conv_row, SUFFIX, rows, taps, n_rows, out, k, c, ow, kw, sw)

/* v as it reads back once stored as T: a bfloat16 rounds it, a float keeps it (the fused BatchNorm's output
   is what the unfused layer would have stored and read). */
#define STORED(V)                                                                                          \
INLINE f##V stored##V##_f32(f##V v) { return v; }                                                          \
INLINE f##V stored##V##_bf16(f##V v) {                                                                     \
    uint16_t t[V];                                                                                         \
    store##V##_bf16(t, v);                                                                                 \
    return load##V##_bf16(t);                                                                              \
}
STORED(16)
STORED(8)
STORED(4)
STORED(1)

/* Rows of an activation as floats, each spread into a zeroed row of `length` pixels: pixel p at
   offset + p*step (pixels that fall outside are dropped). A thread keeps the last `slots` rows it
   spread, tagged by row id, so a row shared by neighbouring output rows is converted once. */
typedef struct {
    float *data, *zeros;
    int64_t *tags, slots, length, c;
    const float *scale, *shift; /* if not NULL: each value v spread as clamp(v * scale + shift, lo, hi) */
    float lo, hi;
} Rows;

static Rows rows_new(int64_t slots, int64_t length, int64_t c, const float *scale, const float *shift, float lo,
                     float hi) {
    Rows rows = {malloc((size_t)((slots + 1) * length * c) * sizeof(float)), NULL,
                 malloc((size_t)slots * sizeof(int64_t)), slots, length, c, scale, shift, lo, hi};
    rows.zeros = rows.data + slots * length * c;
    memset(rows.zeros, 0, (size_t)(length * c) * sizeof(float));
    for (int64_t i = 0; i < slots; i++) rows.tags[i] = -1;
    return rows;
}

static void rows_free(Rows *rows) { free(rows->data); free(rows->tags); }

#define DEFINE_DEPTHWISE(SUFFIX, T)                                                                        \
CONV_ROW(16, SUFFIX, T) CONV_ROW(8, SUFFIX, T) CONV_ROW(4, SUFFIX, T) CONV_ROW(1, SUFFIX, T)              \
WEIGHT_ROW(16, SUFFIX, T) WEIGHT_ROW(8, SUFFIX, T) WEIGHT_ROW(4, SUFFIX, T) WEIGHT_ROW(1, SUFFIX, T)       \
                                                                                                           \
/* Row `id` (width pixels of c channels) of `src`, spread into the thread's cache. */                     \
static const float *spread_##SUFFIX(Rows *rows, const T *src, int64_t id, int64_t width, int64_t offset,     \
                                    int64_t step) {                                                        \
    int64_t slot = id % rows->slots, c = rows->c;                                                          \
    float *out = rows->data + slot * rows->length * c;                                                     \
    if (rows->tags[slot] == id) return out;                                                                \
    int64_t first = offset >= 0 ? offset : 0, last = offset + (width - 1) * step; /* pixels written */     \
    if (step > 1 || last >= rows->length)                                                                  \
        memset(out, 0, (size_t)(rows->length * c) * sizeof(float));                                        \
    else { /* only the padding on either side */                                                           \
        memset(out, 0, (size_t)(first * c) * sizeof(float));                                               \
        memset(out + (last + 1) * c, 0, (size_t)((rows->length - last - 1) * c) * sizeof(float));          \
    }                                                                                                      \
    const T *in = src + id * width * c;                                                                    \
    for (int64_t p = 0; p < width; p++) {                                                                  \
        int64_t at = offset + p * step;                                                                    \
        if (at < 0 || at >= rows->length) continue;                                                        \
        float *to = out + at * c;                                                                          \
        const T *from = in + p * c;                                                                        \
        int64_t k = 0;                                                                                     \
        if (rows->scale) { /* BatchNorm and its activation on the way in, as bn_act.c's forward computes them */ \
            for (; k + WIDE <= c; k += WIDE) {                                                             \
                CAT(f, WIDE, ) z = CAT(load, WIDE, _##SUFFIX)(from + k) * CAT(load, WIDE, _f32)(rows->scale + k) \
                                   + CAT(load, WIDE, _f32)(rows->shift + k);                               \
                CAT(store, WIDE, _f32)(to + k, CAT(stored, WIDE, _##SUFFIX)(CAT(clamp, WIDE, )(z, rows->lo, rows->hi))); \
            }                                                                                              \
            for (; k < c; k++) {                                                                           \
                f1 z = load1_##SUFFIX(from + k) * load1_f32(rows->scale + k) + load1_f32(rows->shift + k);  \
                store1_f32(to + k, stored1_##SUFFIX(clamp1(z, rows->lo, rows->hi)));                       \
            }                                                                                              \
        }                                                                                                  \
        for (; k + WIDE <= c; k += WIDE) CAT(store, WIDE, _f32)(to + k, CAT(load, WIDE, _##SUFFIX)(from + k));\
        for (; k < c; k++) to[k] = load_##SUFFIX(from, k);                                                 \
    }                                                                                                      \
    rows->tags[slot] = id;                                                                                 \
    return out;                                                                                            \
}                                                                                                          \
                                                                                                           \
/* The kh padded input rows (zeros above and below the image) that output row o of image b sees, into xp. */ \
static void seen_rows_##SUFFIX(Rows *cache, const T *x, int64_t b, int64_t o, int64_t h, int64_t wd, int64_t kh, \
                               int64_t sh, int64_t ph, int64_t pw, float **xp) {                            \
    for (int64_t a = 0; a < kh; a++) {                                                                     \
        int64_t i = o * sh - ph + a;                                                                       \
        xp[a] = i < 0 || i >= h ? cache->zeros : (float *)spread_##SUFFIX(cache, x, b * h + i, wd, pw, 1);  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* The forward pass: each output row from the kh padded input rows it sees, kept per thread while the   \
   next output rows need them. */                                                                          \
void dw_forward_##SUFFIX(const T *x, const float *w, T *y, int64_t n, int64_t h, int64_t wd, int64_t c,       \
                         int64_t oh, int64_t ow, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,  \
                         int64_t pw, const float *scale, const float *shift, float lo, float hi) {          \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        Rows cache = rows_new(kh, (ow - 1) * sw + kw, c, scale, shift, lo, hi);                            \
        float *xp[MAX_TAPS];                                                                               \
        const float *taps[MAX_TAPS];                                                                       \
        for (int64_t a = 0; a < kh; a++) taps[a] = w + a * kw * c;                                         \
        int64_t begin, end;                                                                                \
        share(n * oh, &begin, &end);                                                                       \
        for (int64_t row = begin; row < end; row++) {                                                      \
            int64_t b = row / oh, o = row % oh;                                                            \
            seen_rows_##SUFFIX(&cache, x, b, o, h, wd, kh, sh, ph, pw, xp);                                \
            T *out = y + row * ow * c;                                                                     \
            CONV_ROWS(SUFFIX, xp, taps, kh, out, c, ow, kw, sw)                                            \
        }                                                                                                  \
        rows_free(&cache);                                                                                 \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* The input gradient, as a convolution over dy with zeros between its pixels (stride > 1) and the        \
   kernel flipped: rows of the input shared between threads. */                                            \
void dw_backward_input_##SUFFIX(const T *dy, const float *w, T *dx, int64_t n, int64_t h, int64_t wd,         \
                                int64_t c, int64_t oh, int64_t ow, int64_t kh, int64_t kw, int64_t sh,       \
                                int64_t sw, int64_t ph, int64_t pw) {                                        \
    float *reversed = malloc((size_t)(kh * kw * c) * sizeof(float)); /* each kernel row back to front */  \
    for (int64_t a = 0; a < kh; a++)                                                                       \
        for (int64_t e = 0; e < kw; e++)                                                                   \
            memcpy(reversed + (a * kw + e) * c, w + (a * kw + kw - 1 - e) * c, (size_t)c * sizeof(float));  \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        Rows cache = rows_new(kh, wd + kw - 1, c, NULL, NULL, 0.f, 0.f);                                   \
        int64_t begin, end;                                                                                \
        share(n * h, &begin, &end);                                                                        \
        for (int64_t row = begin; row < end; row++) {                                                      \
            int64_t b = row / h, i = row % h, n_rows = 0;                                                  \
            float *rows[MAX_TAPS];                                                                         \
            const float *taps[MAX_TAPS];                                                                   \
            for (int64_t a = 0; a < kh; a++) {                                                             \
                int64_t t = i + ph - a;                                                                    \
                if (t < 0 || t % sh || t / sh >= oh) continue;                                             \
                rows[n_rows] = (float *)spread_##SUFFIX(&cache, dy, b * oh + t / sh, ow, kw - 1 - pw, sw);  \
                taps[n_rows++] = reversed + a * kw * c;                                                    \
            }                                                                                              \
            T *out = dx + row * wd * c;                                                                    \
            CONV_ROWS(SUFFIX, rows, taps, n_rows, out, c, wd, kw, 1)                                       \
        }                                                                                                  \
        rows_free(&cache);                                                                                 \
    }                                                                                                      \
    free(reversed);                                                                                        \
}                                                                                                          \
                                                                                                           \
/* The weight gradient: each thread sums FOLD output rows at a time in float, then into double; the       \
   threads' sums are added at the end. */                                                                           \
void dw_backward_weight_##SUFFIX(const T *dy, const T *x, float *dw, int64_t n, int64_t h, int64_t wd,       \
                                 int64_t c, int64_t oh, int64_t ow, int64_t kh, int64_t kw, int64_t sh,      \
                                 int64_t sw, int64_t ph, int64_t pw, const float *scale, const float *shift, \
                                 float lo, float hi) {                                                       \
    int threads = omp_get_max_threads();                                                                   \
    int64_t taps = kh * kw * c;                                                                            \
    double *partial = calloc((size_t)(threads * taps), sizeof(double));                                   \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        Rows cache = rows_new(kh, (ow - 1) * sw + kw, c, scale, shift, lo, hi);                            \
        float *s = malloc((size_t)taps * sizeof(float)), *xp[MAX_TAPS];                                    \
        double *d = partial + omp_get_thread_num() * taps;                                                 \
        int64_t begin, end;                                                                                \
        share(n * oh, &begin, &end);                                                                       \
        for (int64_t row = begin; row < end; row++) {                                                      \
            int64_t b = row / oh, o = row % oh;                                                            \
            seen_rows_##SUFFIX(&cache, x, b, o, h, wd, kh, sh, ph, pw, xp);                                \
            if ((row - begin) % FOLD == 0) memset(s, 0, (size_t)taps * sizeof(float));                     \
            const T *g = dy + row * ow * c;                                                                \
            if (kh == 3 && kw == 3 && sw == 1)                                                             \
                BLOCKS(weight_row, SUFFIX, g, xp, s, k, c, ow, 3, 3, 1)                                    \
            else if (kh == 3 && kw == 3 && sw == 2)                                                        \
                BLOCKS(weight_row, SUFFIX, g, xp, s, k, c, ow, 3, 3, 2)                                    \
            else                                                                                           \
                BLOCKS(weight_row, SUFFIX, g, xp, s, k, c, ow, kh, kw, sw)                                 \
            if ((row - begin) % FOLD == FOLD - 1 || row == end - 1)                                        \
                for (int64_t k = 0; k < taps; k++) d[k] += s[k];                                           \
        }                                                                                                  \
        free(s);                                                                                           \
        rows_free(&cache);                                                                                 \
    }                                                                                                      \
    for (int64_t k = 0; k < taps; k++) {                                                                   \
        double total = 0;                                                                                  \
        for (int t = 0; t < threads; t++) total += partial[t * taps + k];                                  \
        dw[k] = (float)total;                                                                              \
    }                                                                                                      \
    free(partial);                                                                                         \
}

DEFINE_DEPTHWISE(f32, float)
DEFINE_DEPTHWISE(bf16, uint16_t)
