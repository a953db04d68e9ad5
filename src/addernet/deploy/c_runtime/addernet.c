/* AdderNet C runtime (see addernet.h). */
#include "addernet.h"

#include <float.h>
#include <string.h>

/* The logits equal PyTorch's only if each float operation is rounded to float32 on its own. */
#if defined(__FAST_MATH__)
#error "compile without -ffast-math: it reorders and fuses the float operations the logits depend on"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "float operations must round to float32 (FLT_EVAL_METHOD 0): on 32-bit x86 use -msse2 -mfpmath=sse"
#endif

/* Which sum-of-absolute-differences code is compiled: USADA8 (ARMv7E-M DSP, GCC-style inline assembly),
 * PSADBW (x86 SSE2), or portable C; -DADDERNET_PORTABLE forces the last (the tests compare all of them).
 * The assembly loop needs 13 registers at once and word loads from any address: it is left out without
 * optimisation (-O0 keeps a frame pointer, leaving too few registers) and with -mno-unaligned-access. */
#if defined(__ARM_FEATURE_SIMD32) && defined(__ARM_FEATURE_UNALIGNED) && defined(__GNUC__) && \
    defined(__OPTIMIZE__) && !defined(ADDERNET_PORTABLE)
#define AN_USADA8 1
#elif defined(__SSE2__) && !defined(ADDERNET_PORTABLE)
#define AN_PSADBW 1
#include <emmintrin.h>
#endif

/* the sums' kernel goes into each place that calls it: no call per output position and group of filters */
#if defined(__GNUC__)
#define AN_INLINE static inline __attribute__((always_inline))
#else
#define AN_INLINE static inline
#endif

/* acc[f] += sum |x[i] - w[f][i]| over `rows` runs of n bytes, for four filters f, each input word loaded once
 * for all four. The runs of x start `stride` bytes apart; each filter's runs follow one another. */
AN_INLINE void an_sad4(const uint8_t *x, size_t stride, int rows, const uint8_t *const w[4], int n,
                       uint32_t acc[4]) {
    const uint8_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
    uint32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
#if defined(AN_PSADBW)
    __m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0;
#endif
    for (int row = 0; row < rows; row++) {
        const uint8_t *p = x + (size_t)row * stride, *end = p + n;
#if defined(AN_USADA8)
        /* USADA8: four byte differences summed into an accumulator in one instruction. The loop is written out
         * so that the loads go one after another, which the core pipelines (a load after a load takes one
         * cycle, not two), and no register is copied around it. */
        int words = n >> 2;
        if (words > 0) {
            uint32_t v, f0, f1;
            __asm__("1:\n\t"
                    "ldr %[v], [%[p]], #4\n\t"
                    "ldr %[f0], [%[w0]], #4\n\t"
                    "ldr %[f1], [%[w1]], #4\n\t"
                    "usada8 %[a0], %[v], %[f0], %[a0]\n\t"
                    "usada8 %[a1], %[v], %[f1], %[a1]\n\t"
                    "ldr %[f0], [%[w2]], #4\n\t"
                    "ldr %[f1], [%[w3]], #4\n\t"
                    "usada8 %[a2], %[v], %[f0], %[a2]\n\t"
                    "usada8 %[a3], %[v], %[f1], %[a3]\n\t"
                    "subs %[words], %[words], #1\n\t"
                    "bne 1b"
                    : [v] "=&r"(v), [f0] "=&r"(f0), [f1] "=&r"(f1), [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2),
                      [a3] "+r"(a3), [p] "+r"(p), [w0] "+r"(w0), [w1] "+r"(w1), [w2] "+r"(w2), [w3] "+r"(w3),
                      [words] "+r"(words)
                    :
                    : "cc", "memory");
        }
#elif defined(AN_PSADBW)
        /* PSADBW: two sums of eight byte differences per 16 bytes */
        for (const uint8_t *end16 = p + (n & ~15); p < end16; p += 16, w0 += 16, w1 += 16, w2 += 16, w3 += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            s0 = _mm_add_epi64(s0, _mm_sad_epu8(v, _mm_loadu_si128((const __m128i *)w0)));
            s1 = _mm_add_epi64(s1, _mm_sad_epu8(v, _mm_loadu_si128((const __m128i *)w1)));
            s2 = _mm_add_epi64(s2, _mm_sad_epu8(v, _mm_loadu_si128((const __m128i *)w2)));
            s3 = _mm_add_epi64(s3, _mm_sad_epu8(v, _mm_loadu_si128((const __m128i *)w3)));
        }
#endif
        for (; p < end; p++) {
            int v = *p;
            a0 += (uint32_t)(v > *w0 ? v - *w0 : *w0 - v);
            a1 += (uint32_t)(v > *w1 ? v - *w1 : *w1 - v);
            a2 += (uint32_t)(v > *w2 ? v - *w2 : *w2 - v);
            a3 += (uint32_t)(v > *w3 ? v - *w3 : *w3 - v);
            w0++, w1++, w2++, w3++;
        }
    }
#if defined(AN_PSADBW)
#define AN_HALVES(s) ((uint32_t)_mm_cvtsi128_si32(s) + (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(s, 8)))
    a0 += AN_HALVES(s0);
    a1 += AN_HALVES(s1);
    a2 += AN_HALVES(s2);
    a3 += AN_HALVES(s3);
#undef AN_HALVES
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* acc[f] += sum w[f][i] * (x[i] - zero_point) over runs as in an_sad4, int8 filters: the multiplicative stem
 * (the padding is zero-point bytes in x, so it adds 0) */
static void an_dot4(const uint8_t *x, size_t stride, int rows, const uint8_t *const w[4], int n, int zero_point,
                    uint32_t acc[4]) {
    const int8_t *w0 = (const int8_t *)w[0], *w1 = (const int8_t *)w[1], *w2 = (const int8_t *)w[2],
                 *w3 = (const int8_t *)w[3];
    int32_t a0 = (int32_t)acc[0], a1 = (int32_t)acc[1], a2 = (int32_t)acc[2], a3 = (int32_t)acc[3];
    for (int row = 0; row < rows; row++) {
        const uint8_t *p = x + (size_t)row * stride;
        for (int i = 0; i < n; i++) {
            int32_t v = (int32_t)p[i] - zero_point;
            a0 += *w0++ * v;
            a1 += *w1++ * v;
            a2 += *w2++ * v;
            a3 += *w3++ * v;
        }
    }
    acc[0] = (uint32_t)a0;
    acc[1] = (uint32_t)a1;
    acc[2] = (uint32_t)a2;
    acc[3] = (uint32_t)a3;
}

const char *an_isa(void) {
#if defined(AN_USADA8)
    return "armv7e-m usada8";
#elif defined(AN_PSADBW)
    return "x86 sse2 psadbw";
#else
    return "portable";
#endif
}

/* clamp to [0, 255] (a ReLU's floor is the clamp's), then round half to even: 1.5 * 2^23 + v has no bits below
 * the units, so that addition rounds v (half to even, the default rounding mode) and the subtraction is exact */
static uint8_t an_code(float v) {
    if (!(v > 0.0f)) return 0;
    if (v > 255.0f) v = 255.0f;
    return (uint8_t)((v + 12582912.0f) - 12582912.0f);
}

AN_INLINE void run4(int adder, const uint8_t *x, size_t stride, int rows, const uint8_t *const w[4], int n,
                    int zero_point, uint32_t acc[4]) {
    if (adder)
        an_sad4(x, stride, rows, w, n, acc);  /* the padding is zero-point bytes in x */
    else
        an_dot4(x, stride, rows, w, n, zero_point, acc);
}

/* A window layer's sums at one output position, four filters at a time, each input run read once for all
 * four: adder layers sum |x - w| (an_sad4), the stem w * (x - zero point) (an_dot4). A window inside the map
 * is k runs of k*C bytes, one call; at the border, a row inside is one run, a row in the padding reads k*C
 * zero-point bytes (pad), and a row cut by the map's side goes pixel by pixel. A last group of fewer than
 * four filters repeats its last filter, whose duplicate sums are dropped. */
static void window_sums(const an_layer *L, const uint8_t *x, const an_map *in, int top,
                        int left, const uint8_t *pad, int O, int32_t *sums) {
    int k = L->kernel, C = in->c, H = in->h, W = in->w, z = in->zero_point, adder = L->kind == AN_ADDER;
    size_t row_bytes = (size_t)k * C, filter_bytes = (size_t)k * row_bytes;
    for (int o = 0; o < O; o += 4) {
        const uint8_t *filters[4];
        for (int f = 0; f < 4; f++)
            filters[f] = (const uint8_t *)L->weight + (size_t)(o + f < O ? o + f : O - 1) * filter_bytes;
        uint32_t acc[4] = {0, 0, 0, 0};
        if (top >= 0 && top + k <= H && left >= 0 && left + k <= W) {  /* inside: k runs of k*C bytes */
            run4(adder, x + ((size_t)top * W + left) * C, (size_t)W * C, k, filters, (int)row_bytes, z, acc);
        } else {
            for (int u = 0; u < k; u++) {
                int ii = top + u;
                const uint8_t *w[4] = {filters[0] + u * row_bytes, filters[1] + u * row_bytes,
                                       filters[2] + u * row_bytes, filters[3] + u * row_bytes};
                if (ii < 0 || ii >= H) {
                    run4(adder, pad, 0, 1, w, (int)row_bytes, z, acc);
                } else if (left >= 0 && left + k <= W) {
                    run4(adder, x + ((size_t)ii * W + left) * C, 0, 1, w, (int)row_bytes, z, acc);
                } else {
                    for (int v = 0; v < k; v++) {
                        int jj = left + v;
                        run4(adder, jj >= 0 && jj < W ? x + ((size_t)ii * W + jj) * C : pad, 0, 1, w, C, z, acc);
                        for (int f = 0; f < 4; f++) w[f] += C;
                    }
                }
            }
        }
        for (int f = 0; f < 4 && o + f < O; f++) sums[o + f] = (int32_t)acc[f];
    }
}

static void run_window_layer(const an_model *model, const an_layer *L, float *logits) {
    const an_map *in = &model->maps[L->src];
    int C = in->c, H = in->h, W = in->w, k = L->kernel, s = L->stride, p = L->padding;
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int O = L->dst >= 0 ? model->maps[L->dst].c : model->classes;
    const uint8_t *x = model->arena + in->offset;
    uint8_t *y = L->dst >= 0 ? model->arena + model->maps[L->dst].offset : 0;
    const uint8_t *r = L->residual >= 0 ? model->arena + model->maps[L->residual].offset : 0;
    int zr = L->residual >= 0 ? model->maps[L->residual].zero_point : 0;
    int32_t *sums = model->scratch;                          /* O words */
    uint8_t *pad = (uint8_t *)(model->scratch + O);          /* k*C bytes of the zero point: the padding */
    memset(pad, in->zero_point, (size_t)k * C);
    for (int i = 0; i < Ho; i++) {
        for (int j = 0; j < Wo; j++) {
            window_sums(L, x, in, i * s - p, j * s - p, pad, O, sums);
            for (int o = 0; o < O; o++) {
                float val = (float)sums[o] * L->m[o] + L->c[o];
                if (!y) {
                    logits[o] = val;
                    continue;
                }
                size_t at = ((size_t)i * Wo + j) * O + o;
                if (r) val = val + (float)((int32_t)r[at] - zr) * L->k;
                y[at] = an_code(val);  /* L->relu: max(v, 0), which the clamp at 0 does */
            }
        }
    }
}

static void run_maxpool(const an_model *model, const an_layer *L) {
    const an_map *in = &model->maps[L->src], *out = &model->maps[L->dst];
    const uint8_t *x = model->arena + in->offset;
    uint8_t *y = model->arena + out->offset;
    for (int i = 0; i < out->h; i++)
        for (int j = 0; j < out->w; j++)
            for (int ch = 0; ch < in->c; ch++) {
                uint8_t best = 0;
                for (int u = 0; u < L->kernel; u++)
                    for (int v = 0; v < L->kernel; v++) {
                        uint8_t q = x[(((size_t)(i * L->stride + u)) * in->w + (j * L->stride + v)) * in->c + ch];
                        if (q > best) best = q;
                    }
                y[((size_t)i * out->w + j) * in->c + ch] = best;
            }
}

static void run_head(const an_model *model, const an_layer *L, float *logits) {
    const an_map *in = &model->maps[L->src];
    const uint8_t *x = model->arena + in->offset;
    int C = in->c, P = in->h * in->w;
    int32_t *sums = model->scratch;
    for (int ch = 0; ch < C; ch++) sums[ch] = -P * (int32_t)in->zero_point;
    for (int at = 0; at < P; at++)
        for (int ch = 0; ch < C; ch++) sums[ch] += x[(size_t)at * C + ch];
    for (int o = 0; o < model->classes; o++) {
        const int8_t *w = (const int8_t *)L->weight + (size_t)o * C;
        int32_t acc = 0;
        for (int ch = 0; ch < C; ch++) acc += (int32_t)w[ch] * sums[ch];
        logits[o] = (float)acc * L->m[o] + L->c[o];
    }
}

void an_run(const an_model *model, const uint8_t *image, float *logits) {
    for (int n = 0; n < model->n_layers; n++) {
        const an_layer *L = &model->layers[n];
        if (L->kind == AN_LUT) {
            const an_map *out = &model->maps[L->dst];
            const uint8_t *lut = (const uint8_t *)L->weight;
            uint8_t *y = model->arena + out->offset;
            size_t pixels = (size_t)out->h * out->w;
            for (size_t at = 0; at < pixels; at++)
                for (int ch = 0; ch < out->c; ch++) y[at * out->c + ch] = lut[ch * 256 + image[at * out->c + ch]];
        } else if (L->kind == AN_MAXPOOL) {
            run_maxpool(model, L);
        } else if (L->kind == AN_HEAD) {
            run_head(model, L, logits);
        } else {
            run_window_layer(model, L, logits);
        }
    }
}

int an_argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}
