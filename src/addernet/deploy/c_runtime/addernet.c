/* AdderNet C runtime (see addernet.h). */
#include "addernet.h"

#include <float.h>
#include <stddef.h>
#include <string.h>

/* The logits equal PyTorch's only if each float operation is rounded to float32 on its own. */
#if defined(__FAST_MATH__)
#error "compile without -ffast-math: it reorders and fuses the float operations the logits depend on"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "float operations must round to float32 (FLT_EVAL_METHOD 0): on 32-bit x86 use -msse2 -mfpmath=sse"
#endif

/* Which sum-of-absolute-differences code is compiled: USADA8 (ARMv7E-M DSP, GCC-style assembly in Thumb-2, as
 * Cortex-M4/M7/M33 run; ARMv6 and ARM-mode builds take the portable path), PSADBW (x86 SSE2), or portable C;
 * -DADDERNET_PORTABLE forces the last (the tests compare all of them). Every word the sums load is aligned:
 * window rows of whole words (C a multiple of 4) in word-aligned maps, or gathered windows in the word-aligned
 * scratch. */
#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__) && defined(__GNUC__) && !defined(ADDERNET_PORTABLE)
#define AN_USADA8 1
#elif defined(__SSE2__) && !defined(ADDERNET_PORTABLE)
#define AN_PSADBW 1
#include <emmintrin.h>
#endif

/* An adder layer's sums at two output positions, for all its groups of four filters (interleaved word by word:
 * word i of the group's filter f at 16 i + 4 f), over the same runs of each window: `rows` runs of head + body
 * bytes, a run's end `skip` bytes before the next run's start. The second window starts `second` bytes after the
 * first. The first position's sums go to out[0, 4 groups), the second's `second_out` bytes further.
 * Preconditions (the assembly loops until its pointer meets an end exactly): head a multiple of 4, body of 16,
 * rows and groups at least 1. */
typedef struct {
    int32_t second;      /* bytes from the first window to the second */
    int32_t head;        /* a run's bytes before its whole 16-byte blocks (run bytes % 16) */
    int32_t body;        /* the rest of the run: whole 16-byte blocks */
    int32_t skip;        /* bytes from a run's end to the next run's start */
    int32_t rows;        /* runs per window */
    int32_t groups;      /* groups of four filters */
    int32_t second_out;  /* bytes from the first position's sums to the second's: 16 per group */
} an_pair_args;

/* the assembly reads the fields at these byte offsets: a compile-time check (an array of size -1 does not
 * compile) */
typedef char an_pair_args_layout[offsetof(an_pair_args, second) == 0 && offsetof(an_pair_args, head) == 4 &&
                                 offsetof(an_pair_args, body) == 8 && offsetof(an_pair_args, skip) == 12 &&
                                 offsetof(an_pair_args, rows) == 16 && offsetof(an_pair_args, groups) == 20 &&
                                 offsetof(an_pair_args, second_out) == 24 ? 1 : -1];

#if defined(AN_USADA8)
/* ARMv7E-M: each filter word loaded once for both positions (6 loads per 8 USADA8, against 5 per 4 for one
 * position), the 16-byte blocks of a row unrolled, everything in registers: r0 the first window, r1 the filters,
 * r2 the second window's offset, r3 a filter word, r4-r7 and r8-r11 the two positions' sums, r12 and lr the two
 * input words. [sp]: where the next sums go, [sp+4]: args, [sp+8]: the first window's start, [sp+12]: rows left,
 * [sp+16]: where the current run of steps ends, [sp+20]: groups left. Filter groups follow each other in w. */
void an_sad_pair_armv7em(const uint8_t *x, const uint8_t *w, const an_pair_args *args, uint32_t *out);
__asm__(".pushsection .text.an_sad_pair_armv7em,\"ax\",%progbits\n"
        ".syntax unified\n"
        ".thumb\n"
        ".balign 4\n"
        ".global an_sad_pair_armv7em\n"
        ".type an_sad_pair_armv7em, %function\n"
        ".thumb_func\n"
        ".macro AN_PAIR_STEP\n"
        "ldr lr, [r0, r2]\n"
        "ldr r12, [r0], #4\n"
        "ldr r3, [r1], #4\n"
        "usada8 r4, r12, r3, r4\n"
        "usada8 r8, lr, r3, r8\n"
        "ldr r3, [r1], #4\n"
        "usada8 r5, r12, r3, r5\n"
        "usada8 r9, lr, r3, r9\n"
        "ldr r3, [r1], #4\n"
        "usada8 r6, r12, r3, r6\n"
        "usada8 r10, lr, r3, r10\n"
        "ldr r3, [r1], #4\n"
        "usada8 r7, r12, r3, r7\n"
        "usada8 r11, lr, r3, r11\n"
        ".endm\n"
        "an_sad_pair_armv7em:\n"
        "push {r4-r11, lr}\n"
        "sub sp, sp, #24\n"
        "str r3, [sp]\n"
        "str r2, [sp, #4]\n"
        "str r0, [sp, #8]\n"
        "ldr r3, [r2, #20]\n"
        "str r3, [sp, #20]\n"
        "ldr r2, [r2]\n"
        "1:\n"  /* a group of four filters */
        "mov r4, #0\n mov r5, #0\n mov r6, #0\n mov r7, #0\n"
        "mov r8, #0\n mov r9, #0\n mov r10, #0\n mov r11, #0\n"
        "ldr r0, [sp, #8]\n"
        "ldr r3, [sp, #4]\n"
        "ldr r3, [r3, #16]\n"
        "str r3, [sp, #12]\n"
        "2:\n"  /* a window row: single words up to its first whole block, then blocks of four */
        "ldr r3, [sp, #4]\n"
        "ldr r3, [r3, #4]\n"
        "add r3, r0, r3\n"
        "str r3, [sp, #16]\n"
        "b 4f\n"
        "3:\n"
        "AN_PAIR_STEP\n"
        "4:\n"
        "ldr r3, [sp, #16]\n"
        "cmp r0, r3\n"
        "bne 3b\n"
        "ldr r3, [sp, #4]\n"
        "ldr r3, [r3, #8]\n"
        "add r3, r0, r3\n"
        "str r3, [sp, #16]\n"
        "b 6f\n"
        "5:\n"
        "AN_PAIR_STEP\n AN_PAIR_STEP\n AN_PAIR_STEP\n AN_PAIR_STEP\n"
        "6:\n"
        "ldr r3, [sp, #16]\n"
        "cmp r0, r3\n"
        "bne 5b\n"
        "ldr r3, [sp, #4]\n"
        "ldr r3, [r3, #12]\n"
        "add r0, r0, r3\n"
        "ldr r3, [sp, #12]\n"
        "subs r3, r3, #1\n"
        "str r3, [sp, #12]\n"
        "bne 2b\n"
        "ldr r3, [sp, #4]\n"  /* the group's sums */
        "ldr r12, [r3, #24]\n"
        "ldr r3, [sp]\n"
        "add r12, r3, r12\n"
        "stm r12, {r8-r11}\n"
        "stm r3!, {r4-r7}\n"
        "str r3, [sp]\n"
        "ldr r3, [sp, #20]\n"
        "subs r3, r3, #1\n"
        "str r3, [sp, #20]\n"
        "bne 1b\n"
        "add sp, sp, #24\n"
        "pop {r4-r11, pc}\n"
        ".purgem AN_PAIR_STEP\n"
        ".size an_sad_pair_armv7em, . - an_sad_pair_armv7em\n"
        ".popsection\n");
#define an_sad_pair an_sad_pair_armv7em
#else
/* acc[f] = sum |x - w_f| over `rows` runs of `words` words (`stride` bytes apart) for the four interleaved filters
 * at w, whose words continue from one run to the next; each input word loaded once for all four */
static void an_sad4(const uint8_t *x, size_t stride, int rows, const uint8_t *w, int words, uint32_t acc[4]) {
    uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#if defined(AN_PSADBW)
    __m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0;
#endif
    for (int row = 0; row < rows; row++) {
        const uint8_t *p = x + (size_t)row * stride;
        int i = 0;
#if defined(AN_PSADBW)
        /* PSADBW on four words of x at a time: the four filters' words turned into four rows of 16 bytes (a 4x4
         * transpose of 32-bit lanes), then two sums of eight byte differences per row */
        for (; i + 4 <= words; i += 4, p += 16, w += 64) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i b0 = _mm_loadu_si128((const __m128i *)w), b1 = _mm_loadu_si128((const __m128i *)(w + 16));
            __m128i b2 = _mm_loadu_si128((const __m128i *)(w + 32)), b3 = _mm_loadu_si128((const __m128i *)(w + 48));
            __m128i t0 = _mm_unpacklo_epi32(b0, b1), t1 = _mm_unpacklo_epi32(b2, b3);  /* f0 f0 f1 f1 */
            __m128i t2 = _mm_unpackhi_epi32(b0, b1), t3 = _mm_unpackhi_epi32(b2, b3);  /* f2 f2 f3 f3 */
            s0 = _mm_add_epi64(s0, _mm_sad_epu8(v, _mm_unpacklo_epi64(t0, t1)));
            s1 = _mm_add_epi64(s1, _mm_sad_epu8(v, _mm_unpackhi_epi64(t0, t1)));
            s2 = _mm_add_epi64(s2, _mm_sad_epu8(v, _mm_unpacklo_epi64(t2, t3)));
            s3 = _mm_add_epi64(s3, _mm_sad_epu8(v, _mm_unpackhi_epi64(t2, t3)));
        }
#endif
        for (; i < words; i++, p += 4, w += 16)
            for (int b = 0; b < 4; b++) {
                int v = p[b];
                a0 += (uint32_t)(v > w[b] ? v - w[b] : w[b] - v);
                a1 += (uint32_t)(v > w[4 + b] ? v - w[4 + b] : w[4 + b] - v);
                a2 += (uint32_t)(v > w[8 + b] ? v - w[8 + b] : w[8 + b] - v);
                a3 += (uint32_t)(v > w[12 + b] ? v - w[12 + b] : w[12 + b] - v);
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

/* the pair, one position after the other (an_sad_pair_armv7em's saving, filter words loaded once for two
 * positions, is a register-file matter of the Cortex-M; here the pairing only keeps one layer loop for all) */
static void an_sad_pair(const uint8_t *x, const uint8_t *w, const an_pair_args *args, uint32_t *out) {
    int words = (args->head + args->body) / 4;
    size_t stride = (size_t)(args->head + args->body + args->skip), group_bytes = (size_t)16 * words * args->rows;
    uint32_t *second = out + args->second_out / 4;
    for (int g = 0; g < args->groups; g++, w += group_bytes, out += 4, second += 4) {
        an_sad4(x, stride, args->rows, w, words, out);
        an_sad4(x + args->second, stride, args->rows, w, words, second);
    }
}
#endif

/* acc[f] = sum w_f * (x - zero_point) over n bytes of x, for four int8 filters one after another (filter f at
 * w + f * n): the multiplicative stem, on a gathered window (its padding is zero-point bytes: it adds 0) */
static void an_dot4(const uint8_t *x, const uint8_t *w, int n, int zero_point, uint32_t acc[4]) {
    const int8_t *w0 = (const int8_t *)w, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int i = 0; i < n; i++) {
        int32_t v = (int32_t)x[i] - zero_point;
        a0 += w0[i] * v;
        a1 += w1[i] * v;
        a2 += w2[i] * v;
        a3 += w3[i] * v;
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

/* The window at (top, left) as one run: its k*k*C bytes one after another (zero-point bytes in the padding),
 * then zero-point bytes up to `bytes`. */
static void gather_window(const uint8_t *x, const an_map *in, int k, int top, int left, uint8_t *out,
                          size_t bytes) {
    int C = in->c, z = in->zero_point, row_inside = left >= 0 && left + k <= in->w;
    size_t run = (size_t)k * C;
    uint8_t *o = out;
    for (int u = 0; u < k; u++) {
        int ii = top + u;
        if (ii < 0 || ii >= in->h) {
            memset(o, z, run);
        } else if (row_inside) {  /* a word at a time (a 4-byte memcpy: one load and one store where the CPU
                                    * allows unaligned words, as Cortex-M4 and x86 do), then the bytes left: rows
                                    * are short (5 bytes in LeNet's first layer), where a library call costs more */
            const uint8_t *p = x + ((size_t)ii * in->w + left) * C;
            size_t b = 0;
            for (; b + 4 <= run; b += 4) memcpy(o + b, p + b, 4);
            for (; b < run; b++) o[b] = p[b];
        } else {
            for (int v = 0; v < k; v++) {
                int jj = left + v;
                if (jj >= 0 && jj < in->w)
                    memcpy(o + (size_t)v * C, x + ((size_t)ii * in->w + jj) * C, C);
                else
                    memset(o + (size_t)v * C, z, C);
            }
        }
        o += run;
    }
    memset(o, z, (size_t)(out + bytes - o));
}

/* One output position from its sums: the logits, or the next map's bytes (a residual added, the ReLU's floor and
 * the clamp, rounding). */
static void write_position(const an_model *model, const an_layer *L, const uint32_t *sums, size_t at,
                           float *logits) {
    if (L->dst < 0) {
        for (int o = 0; o < model->classes; o++) logits[o] = (float)(int32_t)sums[o] * L->m[o] + L->c[o];
        return;
    }
    const an_map *out = &model->maps[L->dst];
    uint8_t *y = model->arena + out->offset + at * out->c;
    if (L->residual >= 0) {
        const an_map *res = &model->maps[L->residual];
        const uint8_t *r = model->arena + res->offset + at * out->c;
        for (int o = 0; o < out->c; o++) {
            float val = (float)(int32_t)sums[o] * L->m[o] + L->c[o];
            y[o] = an_code(val + (float)((int32_t)r[o] - res->zero_point) * L->k);
        }
    } else {  /* L->relu: max(v, 0), which the clamp at 0 does */
        for (int o = 0; o < out->c; o++) y[o] = an_code((float)(int32_t)sums[o] * L->m[o] + L->c[o]);
    }
}

/* an_sad_pair's arguments for windows of `rows` runs of `run` bytes (a multiple of 4), `skip` bytes apart, the
 * second window `second` bytes after the first, `groups` groups of four filters */
static an_pair_args pair_args(size_t second, size_t run, size_t skip, int rows, int groups) {
    an_pair_args args = {(int32_t)second, (int32_t)(run % 16), (int32_t)(run - run % 16), (int32_t)skip, rows,
                         groups, 16 * groups};
    return args;
}

/* An adder layer sums two output positions at a time (an_sad_pair): in place where both windows lie inside the
 * map and its rows are whole words (C a multiple of 4); every other position (the border, a last column without
 * a neighbour, a layer whose channels are not a multiple of 4) on its gathered window, paired with the next such
 * position of the layer. The stem sums one gathered window at a time. */
static void run_window_layer(const an_model *model, const an_layer *L, float *logits) {
    const an_map *in = &model->maps[L->src];
    int C = in->c, H = in->h, W = in->w, k = L->kernel, s = L->stride, p = L->padding;
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int O = L->dst >= 0 ? model->maps[L->dst].c : model->classes, O4 = (O + 3) & ~3;
    int adder = L->kind == AN_ADDER, in_place = adder && C % 4 == 0, waiting = 0;
    size_t row_bytes = (size_t)k * C, window = (k * row_bytes + 3) & ~(size_t)3, waiting_at = 0;
    const uint8_t *x = model->arena + in->offset, *weight = (const uint8_t *)L->weight;
    uint32_t *sums = (uint32_t *)model->scratch;          /* 2 * O4 words: two positions */
    uint8_t *gathered = (uint8_t *)(sums + 2 * O4);      /* two gathered windows */
    an_pair_args inside = pair_args(s * C, row_bytes, (W - k) * C, k, O4 / 4);  /* rows of the map */
    an_pair_args two_runs = pair_args(window, window, 0, 1, O4 / 4);             /* two gathered windows */
    for (int i = 0; i < Ho; i++) {
        int top = i * s - p, rows_inside = top >= 0 && top + k <= H;
        for (int j = 0; j < Wo; j++) {
            int left = j * s - p;
            size_t at = (size_t)i * Wo + j;
            if (!adder) {
                gather_window(x, in, k, top, left, gathered, window);
                for (int o = 0; o < O; o += 4)
                    an_dot4(gathered, weight + (size_t)o * k * row_bytes, (int)(k * row_bytes), in->zero_point,
                            sums + o);
                write_position(model, L, sums, at, logits);
            } else if (in_place && rows_inside && j + 1 < Wo && left >= 0 && left + s + k <= W) {
                an_sad_pair(x + ((size_t)top * W + left) * C, weight, &inside, sums);
                write_position(model, L, sums, at, logits);
                write_position(model, L, sums + O4, at + 1, logits);
                j++;
            } else if (!waiting) {
                gather_window(x, in, k, top, left, gathered, window);
                waiting = 1, waiting_at = at;
            } else {
                gather_window(x, in, k, top, left, gathered + window, window);
                an_sad_pair(gathered, weight, &two_runs, sums);
                write_position(model, L, sums, waiting_at, logits);
                write_position(model, L, sums + O4, at, logits);
                waiting = 0;
            }
        }
    }
    if (waiting) {  /* the last one alone: its window summed twice (the second time in place of a neighbour) */
        two_runs.second = 0;
        an_sad_pair(gathered, weight, &two_runs, sums);
        write_position(model, L, sums, waiting_at, logits);
    }
}

static void run_maxpool(const an_model *model, const an_layer *L) {
    const an_map *in = &model->maps[L->src], *out = &model->maps[L->dst];
    int C = in->c, k = L->kernel, s = L->stride;
    const uint8_t *x = model->arena + in->offset;
    uint8_t *y = model->arena + out->offset;
    for (int i = 0; i < out->h; i++)
        for (int j = 0; j < out->w; j++, y += C) {
            const uint8_t *corner = x + ((size_t)i * s * in->w + (size_t)j * s) * C;
            memcpy(y, corner, C);
            for (int u = 0; u < k; u++)
                for (int v = 0; v < k; v++) {
                    const uint8_t *q = corner + ((size_t)u * in->w + v) * C;
                    for (int ch = 0; ch < C; ch++)
                        if (q[ch] > y[ch]) y[ch] = q[ch];
                }
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
