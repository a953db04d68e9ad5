/* AdderNet C runtime: integer adder networks, C99, no heap. Written by src/export.py format=c.
 *
 * A network is a list of layers over 8-bit activation maps (HWC, one byte per value) in one static arena.
 * The arithmetic is that of addernet.deploy.integer: integer sums, then
 *   v = (float)sum * m[o] + c[o];  v = v + (float)(r - zr) * k;  ReLU;  round-half-even(clamp(v, 0, 255))
 * one float32 operation at a time. Compile without contracting a*b+c into fused multiply-adds
 * (-ffp-contract=off), or the logits will differ from PyTorch's in their last bits. */
#ifndef ADDERNET_H
#define ADDERNET_H

#include <stdint.h>

enum an_kind { AN_LUT, AN_CONV, AN_ADDER, AN_MAXPOOL, AN_HEAD };

/* model.c's weights and arena start on a 32-bit word: the usada8 path loads whole words (GCC-style compilers
 * only; the portable path, which other compilers take, reads bytes) */
#if defined(__GNUC__)
#define AN_WORD_ALIGNED __attribute__((aligned(4)))
#else
#define AN_WORD_ALIGNED
#endif

typedef struct {
    uint16_t c, h, w;     /* channels, height, width */
    uint8_t zero_point;   /* the code of the real value 0 */
    uint32_t offset;      /* where it lives in the arena */
} an_map;

typedef struct {
    uint8_t kind;         /* enum an_kind */
    uint8_t kernel, stride, padding, relu;
    int16_t src, dst;     /* map indices; LUT reads the image, dst -1: the logits */
    int16_t residual;     /* a map added before the ReLU, or -1 */
    const void *weight;   /* LUT uint8 [C][256]; HEAD int8 [K][C]; with O rounded up to a multiple of 4 (copies of
                           * the last filter): CONV int8 [O][k][k][C]; ADDER uint8 [O/4][G/4][4 filters][4 bytes],
                           * four filters' words interleaved, over a window's k*k*C bytes (in [k][k][C] order)
                           * followed by the input's zero point up to G, the next multiple of 4 */
    const float *m, *c;   /* per output channel */
    float k;              /* the residual's factor */
} an_layer;

typedef struct {
    const an_layer *layers;
    uint16_t n_layers;
    const an_map *maps;
    uint16_t classes;
    uint8_t *arena;
    int32_t *scratch;           /* a window layer's sums at two positions and two gathered windows; the head's sums */
} an_model;

/* Logits (float32, `classes` of them) of one uint8 HWC image. */
void an_run(const an_model *model, const uint8_t *image, float *logits);

/* The index of the largest logit (the first, on ties). */
int an_argmax(const float *logits, int n);

/* Which sum-of-absolute-differences code was compiled: "armv7e-m usada8", "x86 sse2 psadbw" or "portable". */
const char *an_isa(void);

#endif
