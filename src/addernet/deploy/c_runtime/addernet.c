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

#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

/* sum |a[i] - b[i]| over n bytes */
static uint32_t an_sad(const uint8_t *a, const uint8_t *b, int n) {
    uint32_t acc = 0;
    int i = 0;
#if defined(__ARM_FEATURE_SIMD32)
    /* USADA8: four byte differences summed into the accumulator, one instruction */
    for (; i + 4 <= n; i += 4) {
        uint32_t wa, wb;
        memcpy(&wa, a + i, 4);
        memcpy(&wb, b + i, 4);
        acc = __usada8(wa, wb, acc);
    }
#elif defined(__SSE2__)
    __m128i sums = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i va = _mm_loadu_si128((const __m128i *)(a + i));
        __m128i vb = _mm_loadu_si128((const __m128i *)(b + i));
        sums = _mm_add_epi64(sums, _mm_sad_epu8(va, vb));
    }
    acc = (uint32_t)_mm_cvtsi128_si32(sums) + (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(sums, 8));
#endif
    for (; i < n; i++) acc += (uint32_t)(a[i] > b[i] ? a[i] - b[i] : b[i] - a[i]);
    return acc;
}

const char *an_isa(void) {
#if defined(__ARM_FEATURE_SIMD32)
    return "armv7e-m usada8";
#elif defined(__SSE2__)
    return "x86 sse2 psadbw";
#else
    return "portable";
#endif
}

/* clamp to [0, 255] (a ReLU's floor is the clamp's), then round half to even; v - i is exact here */
static uint8_t an_code(float v) {
    if (!(v > 0.0f)) return 0;
    if (v > 255.0f) v = 255.0f;
    int i = (int)v;
    float fraction = v - (float)i;
    if (fraction > 0.5f || (fraction == 0.5f && (i & 1))) i++;
    return (uint8_t)i;
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
    int z = in->zero_point;
    uint8_t *pad_row = (uint8_t *)model->scratch;  /* C bytes of the zero point: the padding */
    if (L->kind == AN_ADDER) memset(pad_row, z, (size_t)C);
    for (int i = 0; i < Ho; i++) {
        for (int j = 0; j < Wo; j++) {
            for (int o = 0; o < O; o++) {
                int32_t sum = 0;
                for (int u = 0; u < k; u++) {
                    int ii = i * s + u - p;
                    for (int v = 0; v < k; v++) {
                        int jj = j * s + v - p;
                        int inside = ii >= 0 && ii < H && jj >= 0 && jj < W;
                        const uint8_t *row = inside ? x + ((size_t)ii * W + jj) * C : pad_row;
                        if (L->kind == AN_ADDER) {
                            const uint8_t *w = (const uint8_t *)L->weight + (((size_t)o * k + u) * k + v) * C;
                            sum += (int32_t)an_sad(row, w, C);
                        } else if (inside) {  /* CONV: int8 filters times (x - zero point); padding adds 0 */
                            const int8_t *w = (const int8_t *)L->weight + (((size_t)o * k + u) * k + v) * C;
                            for (int ch = 0; ch < C; ch++) sum += (int32_t)w[ch] * ((int32_t)row[ch] - z);
                        }
                    }
                }
                float val = (float)sum * L->m[o] + L->c[o];
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
