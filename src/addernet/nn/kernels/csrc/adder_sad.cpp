// int8 adder layer on the CPU: y[m, o] = a[o] * sum_k |qx[m, k] - qw[o, k]| + b[o].
//
// The sum of absolute differences of unsigned bytes is one x86 instruction (vpsadbw: |a - b| over 8 bytes
// into a 64-bit lane; 32 byte pairs per AVX2 instruction, 64 per AVX-512BW one). Input and filters share one
// 8-bit quantisation (scale s, zero point z), so |x - w| = s * |qx - qw| and the zero point cancels; spatial
// padding is the byte z (a real 0). The float input is quantised and padded here, channels last, so each
// window row of a kh x kw window is one contiguous run of kw * C bytes; the filters are packed to match (see
// below). Sums are exact (at most 255 * K). a and b fold the -s of the adder layer and the BatchNorm after it.
//
// The instruction set is chosen at run time (AVX-512BW, AVX2, else portable C++), so one build runs on any
// x86-64 CPU; threads come from ATen's pool (torch.set_num_threads).
//
// Entry points: the operators sad_forward (one layer), sad_sums (the sums alone), sad_pack (the filters'
// layout), small_conv (a float stem), sad_limit and sad_throughput (the instructions' own rates); and the Python
// classes Layers (a chain of layers in one call, below), Network (a float stem, such a chain and a pooled linear
// head in one call) and Places (what the Python modules check before they reuse such an object).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ADDERNET_X86 1
#endif

namespace {

// Filters packed for the kernel: (O / 8 groups, kh, T = ceil(kw * C / 8) byte groups, 8 filters, 8 bytes). One
// 64-byte vector holds the same 8 input bytes' counterparts of 8 filters, so SAD against the input's 8 bytes
// broadcast to every lane leaves each lane with its own filter's partial sum: the accumulators end up holding
// 8 outputs side by side, with no horizontal reduction (at K = 144 a reduction per output cost as much as
// the sums). Bytes past the window row and filters past O are zero, and the input's bytes past the row are
// masked to zero, so they add nothing.
constexpr int64_t kLanes = 8;

struct Problem {
  const uint8_t* x;   // padded input (N, Hp, Wp, C), with slack after the end
  const uint8_t* w;   // packed filters, see above
  const float* a;
  const float* b;
  float* y;           // (N, Ho, Wo, O)
  const float* residual;  // added to y before the ReLU, (N, Ho, Wo, O); or null
  bool relu;
  int64_t Hp, Wp, C, O, kh, kw, Ho, Wo, stride;
  int64_t run;        // bytes per window row: kw * C
  int64_t groups;     // byte groups per window row: ceil(run / 8)
  int32_t* sums = nullptr;  // when set, the sums themselves go here (N, Ho, Wo, O), and y is not written
};

inline const uint8_t* window(const Problem& p, int64_t m) {
  const int64_t n = m / (p.Ho * p.Wo), rest = m % (p.Ho * p.Wo);
  const int64_t i = rest / p.Wo, j = rest % p.Wo;
  return p.x + ((n * p.Hp + i * p.stride) * p.Wp + j * p.stride) * p.C;
}

// the windows of positions m, m + 1, ... in order
struct Positions {
  const Problem& p;
  int64_t n, i, j;
  Positions(const Problem& prob, int64_t m) : p(prob) {
    n = m / (p.Ho * p.Wo);
    i = (m % (p.Ho * p.Wo)) / p.Wo;
    j = m % p.Wo;
  }
  const uint8_t* next() {
    const uint8_t* at = p.x + ((n * p.Hp + i * p.stride) * p.Wp + j * p.stride) * p.C;
    if (++j == p.Wo) {
      j = 0;
      if (++i == p.Ho) i = 0, ++n;
    }
    return at;
  }
};

inline const uint8_t* filters(const Problem& p, int64_t group, int64_t u) {
  return p.w + (group * p.kh + u) * p.groups * kLanes * 8;
}

inline uint64_t load8(const uint8_t* ptr) {
  uint64_t v;
  std::memcpy(&v, ptr, 8);
  return v;
}

// the input bytes of the last group of a row that belong to the row
inline uint64_t tail_mask(const Problem& p) {
  const int64_t tail = p.run - 8 * (p.groups - 1);
  return tail == 8 ? ~0ULL : ((1ULL << (8 * tail)) - 1);
}

// the output map of one value: a * sum + b (a multiply and an add, not fused), + residual, ReLU
inline float output(const Problem& p, int64_t at, int64_t o, int64_t sum) {
  float y = p.a[o] * static_cast<float>(sum) + p.b[o];
  if (p.residual) y += p.residual[at];
  return p.relu ? std::max(y, 0.0f) : y;
}

// 8 outputs of filter group g at position m, the filters past O left out
inline void store8(const Problem& p, int64_t m, int64_t g, const int64_t* sums) {
  const int64_t o0 = g * kLanes, count = std::min<int64_t>(kLanes, p.O - o0);
  if (p.sums) {
    for (int64_t f = 0; f < count; ++f) p.sums[m * p.O + o0 + f] = static_cast<int32_t>(sums[f]);
    return;
  }
  for (int64_t f = 0; f < count; ++f) p.y[m * p.O + o0 + f] = output(p, m * p.O + o0 + f, o0 + f, sums[f]);
}

void positions_portable(const Problem& p, int64_t begin, int64_t end) {
  const int64_t row_bytes = p.Wp * p.C;
  const uint64_t last = tail_mask(p);
  for (int64_t m = begin; m < end; ++m) {
    const uint8_t* xw = window(p, m);
    for (int64_t g = 0; g * kLanes < p.O; ++g) {
      int64_t sums[kLanes] = {0};
      for (int64_t u = 0; u < p.kh; ++u) {
        const uint8_t* wr = filters(p, g, u);
        for (int64_t t = 0; t < p.groups; ++t) {
          uint64_t xv = load8(xw + u * row_bytes + 8 * t);
          if (t == p.groups - 1) xv &= last;
          for (int64_t f = 0; f < kLanes; ++f)
            for (int k = 0; k < 8; ++k)
              sums[f] += std::abs(int((xv >> (8 * k)) & 0xFF) - int(wr[(t * kLanes + f) * 8 + k]));
        }
      }
      store8(p, m, g, sums);
    }
  }
}

#ifdef ADDERNET_X86

// output() for 8 and 16 filters at once: a * sums + b, + residual[at] (where there is one), ReLU, into y + at; the
// same operations in the same order for finite values (the vector max gives +0 for -0 and 0 for NaN where
// std::max keeps them). The operands come as values: the callers hold them in locals, a and b loaded once for
// all the positions of a block (read through the Problem after each store, GCC loaded them again every time: on
// AMD Zen 4 the network 1.02-1.07x as fast without that, side by side).
__attribute__((target("avx2"), always_inline)) inline void store_outputs8(__m256 a, __m256 b, __m256 sums,
                                                                          const float* residual, bool relu, float* y,
                                                                          int64_t at) {
  __m256 out = _mm256_add_ps(_mm256_mul_ps(a, sums), b);
  if (residual) out = _mm256_add_ps(out, _mm256_loadu_ps(residual + at));
  if (relu) out = _mm256_max_ps(out, _mm256_setzero_ps());
  _mm256_storeu_ps(y + at, out);
}

__attribute__((target("avx512f"), always_inline)) inline void store_outputs16(__m512 a, __m512 b, __m512 sums,
                                                                             const float* residual, bool relu,
                                                                             float* y, int64_t at) {
  __m512 out = _mm512_add_ps(_mm512_mul_ps(a, sums), b);
  if (residual) out = _mm512_add_ps(out, _mm512_loadu_ps(residual + at));
  if (relu) out = _mm512_max_ps(out, _mm512_setzero_ps());
  _mm512_storeu_ps(y + at, out);
}

// P positions x G groups of 8 filters: P * G accumulators (AVX-512: 32 registers), the G filter vectors of the
// byte group loaded once, each position's 8 input bytes broadcast once (masked where the row ends inside the
// group) and used against all G.
template <int P, int G>
__attribute__((target("avx512f,avx512bw,avx512dq"), always_inline)) inline void sad_step_avx512(
    __m512i (&acc)[P][G], const uint8_t* const* xw, const uint8_t* const* wr, int64_t x_offset, int64_t w_offset,
    const __m512i* mask) {
  __m512i wv[G];
  for (int g = 0; g < G; ++g) wv[g] = _mm512_loadu_si512(wr[g] + w_offset);
  for (int q = 0; q < P; ++q) {
    __m512i xb = _mm512_set1_epi64(static_cast<long long>(load8(xw[q] + x_offset)));
    if (mask) xb = _mm512_and_si512(xb, *mask);
    for (int g = 0; g < G; ++g) acc[q][g] = _mm512_add_epi64(acc[q][g], _mm512_sad_epu8(xb, wv[g]));
  }
}

// one accumulator's 8 sums (filter group g0 + g at position m0 + q): as they are, or through the output map;
// the filters past O left out
template <int P, int G>
__attribute__((target("avx512f,avx512bw,avx512dq"), always_inline)) inline void store_group_avx512(
    const Problem& p, __m512i (&acc)[P][G], int64_t g0, int64_t m0, int q, int g) {
  const int64_t o = (g0 + g) * kLanes, at = (m0 + q) * p.O + o;
  if (o + kLanes <= p.O && p.sums) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.sums + at), _mm512_cvtepi64_epi32(acc[q][g]));
  } else if (o + kLanes <= p.O) {
    store_outputs8(_mm256_loadu_ps(p.a + o), _mm256_loadu_ps(p.b + o), _mm512_cvtepi64_ps(acc[q][g]), p.residual,
                   p.relu, p.y, at);
  } else {
    alignas(64) int64_t sums[kLanes];
    _mm512_store_si512(sums, acc[q][g]);
    store8(p, m0 + q, g0 + g, sums);
  }
}

// The accumulators' sums as they are (into p.sums) or through the output map, two filter groups at a time where
// both are whole (their sums as one vector of 16 32-bit sums: each fits, at most 255 * K < 2^31, checked). The
// loops unrolled, so that the accumulators stay in registers: indexed by a loop's counter they went through
// the stack (on Zen 5 the sums alone 1.03-1.11x faster unrolled, the AVX2 block's likewise 1.02-1.11x).
template <int P, int G>
__attribute__((target("avx512f,avx512bw,avx512dq"), always_inline)) inline void store_block_avx512(
    const Problem& p, __m512i (&acc)[P][G], int64_t g0, int64_t m0) {
  const __m512i low_words = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const int64_t O = p.O;
  float* const y = p.y;
  const float* const residual = p.residual;
  const bool relu = p.relu;
#pragma GCC unroll 16
  for (int g = 0; g + 1 < G; g += 2) {
    const int64_t o = (g0 + g) * kLanes;
    if (p.sums || o + 2 * kLanes > O) {
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) {
        store_group_avx512<P, G>(p, acc, g0, m0, q, g);
        store_group_avx512<P, G>(p, acc, g0, m0, q, g + 1);
      }
      continue;
    }
    const __m512 a = _mm512_loadu_ps(p.a + o), b = _mm512_loadu_ps(p.b + o);
#pragma GCC unroll 16
    for (int q = 0; q < P; ++q)
      store_outputs16(a, b, _mm512_cvtepi32_ps(_mm512_permutex2var_epi32(acc[q][g], low_words, acc[q][g + 1])),
                      residual, relu, y, (m0 + q) * O + o);
  }
  if (G % 2) {
#pragma GCC unroll 16
    for (int q = 0; q < P; ++q) store_group_avx512<P, G>(p, acc, g0, m0, q, G - 1);
  }
}

template <int P, int G>
__attribute__((target("avx512f,avx512bw,avx512dq"))) void block_avx512(const Problem& p, const uint8_t* const* xw,
                                                                       int64_t g0, int64_t m0) {
  const int64_t row_bytes = p.Wp * p.C, groups = p.groups, kh = p.kh;
  const __m512i last = _mm512_set1_epi64(static_cast<long long>(tail_mask(p)));
  const bool masked = tail_mask(p) != ~0ULL;
  const int64_t whole = masked ? groups - 1 : groups;
  __m512i acc[P][G];
  for (int q = 0; q < P; ++q)
    for (int g = 0; g < G; ++g) acc[q][g] = _mm512_setzero_si512();
  for (int64_t u = 0; u < kh; ++u) {
    const uint8_t* wr[G];
    for (int g = 0; g < G; ++g) wr[g] = filters(p, g0 + g, u);
    // two byte groups a round: half the loop's branches (on AMD Zen 5, 1.2-1.4x on 3x3 windows over 16 channels,
    // measured before those took the unrolled block below)
    int64_t t = 0;
    for (; t + 2 <= whole; t += 2) {
      sad_step_avx512<P, G>(acc, xw, wr, u * row_bytes + 8 * t, 64 * t, nullptr);
      sad_step_avx512<P, G>(acc, xw, wr, u * row_bytes + 8 * t + 8, 64 * t + 64, nullptr);
    }
    if (t < whole) sad_step_avx512<P, G>(acc, xw, wr, u * row_bytes + 8 * t, 64 * t, nullptr);
    if (masked) sad_step_avx512<P, G>(acc, xw, wr, u * row_bytes + 8 * whole, 64 * whole, &last);
  }
  store_block_avx512<P, G>(p, acc, g0, m0);
}

// A window of KH rows of T whole byte groups each, both known when compiling (3 x 3 windows over 16, 32 or 64
// channels: the CIFAR ResNets' layers): every step unrolled, no loop and no mask (on Zen 5 the sums alone
// 1.19-1.22x as fast at 16 channels, 6 byte groups a row, and 1.07-1.09x at 32 and 64, side by side). The empty
// asm after each step keeps every sum in its own register: without it GCC regrouped the unrolled additions into
// trees that need more registers than there are and moved the accumulators to the stack.
template <int P, int G, int KH, int T>
__attribute__((target("avx512f,avx512bw,avx512dq"))) void block_avx512_unrolled(const Problem& p,
                                                                                const uint8_t* const* xw,
                                                                                int64_t g0, int64_t m0) {
  const int64_t row_bytes = p.Wp * p.C;
  const uint8_t* wr[G];
  for (int g = 0; g < G; ++g) wr[g] = filters(p, g0 + g, 0);
  __m512i acc[P][G];
  for (int q = 0; q < P; ++q)
    for (int g = 0; g < G; ++g) acc[q][g] = _mm512_setzero_si512();
#pragma GCC unroll 8
  for (int u = 0; u < KH; ++u) {
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      sad_step_avx512<P, G>(acc, xw, wr, u * row_bytes + 8 * t, 64 * (u * T + t), nullptr);
      for (int q = 0; q < P; ++q)
        for (int g = 0; g < G; ++g) __asm__("" : "+v"(acc[q][g]));
    }
  }
  store_block_avx512<P, G>(p, acc, g0, m0);
}

// AVX2: a group's 8 filters are two 32-byte halves of 4 lanes each. There are 16 vector registers: P * 2G
// accumulators, P broadcast input words, one filter vector and the instruction's result must fit (P = 4,
// G = 1: 8 + 4 + 1 + 1), or the accumulators live on the stack (a load and a store per instruction: GCC did
// that to the 4 x 16-filter block). Sums are added as 32-bit lanes (each fits: at most 255 * K < 2^31,
// checked), so that the output map can put a group's 8 sums in one vector: the low words of the two halves,
// interleaved, then put in filter order.
// one byte group: P input words (masked where the row ends inside the group) against 2G filter halves
template <int P, int G>
__attribute__((target("avx2"), always_inline)) inline void sad_step_avx2(__m256i (&acc)[P][2 * G],
                                                                         const uint8_t* const* xw,
                                                                         const uint8_t* const* wr, int64_t x_offset,
                                                                         int64_t w_offset, const __m256i* mask) {
  __m256i xb[P];
  for (int q = 0; q < P; ++q) {
    xb[q] = _mm256_set1_epi64x(static_cast<long long>(load8(xw[q] + x_offset)));
    if (mask) xb[q] = _mm256_and_si256(xb[q], *mask);
  }
  for (int h = 0; h < 2 * G; ++h) {
    __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[h / 2] + w_offset + 32 * (h % 2)));
    __asm__("" : "+x"(wv));  // one load, kept in a register: GCC would load it again for each position
    for (int q = 0; q < P; ++q) acc[q][h] = _mm256_add_epi32(acc[q][h], _mm256_sad_epu8(xb[q], wv));
  }
}

template <int P, int G>
__attribute__((target("avx2"))) void block_avx2(const Problem& p, const uint8_t* const* xw, int64_t g0, int64_t m0) {
  const int64_t row_bytes = p.Wp * p.C, groups = p.groups, kh = p.kh;
  const __m256i last = _mm256_set1_epi64x(static_cast<long long>(tail_mask(p)));
  const bool masked = tail_mask(p) != ~0ULL;
  const int64_t whole = masked ? groups - 1 : groups;  // byte groups that need no mask
  __m256i acc[P][2 * G];
  for (int q = 0; q < P; ++q)
    for (int h = 0; h < 2 * G; ++h) acc[q][h] = _mm256_setzero_si256();
  for (int64_t u = 0; u < kh; ++u) {
    const uint8_t* wr[G];
    for (int g = 0; g < G; ++g) wr[g] = filters(p, g0 + g, u);
    for (int64_t t = 0; t < whole; ++t) sad_step_avx2<P, G>(acc, xw, wr, u * row_bytes + 8 * t, 64 * t, nullptr);
    if (masked) sad_step_avx2<P, G>(acc, xw, wr, u * row_bytes + 8 * whole, 64 * whole, &last);
  }
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const int64_t O = p.O;
  float* const y = p.y;
  const float* const residual = p.residual;
  const bool relu = p.relu;
  // unrolled, so that the accumulators stay in registers (see store_block_avx512)
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g) {
    const int64_t o = (g0 + g) * kLanes;
    const bool mapped = o + kLanes <= O && !p.sums;  // whole: through the output map
    const __m256 a = mapped ? _mm256_loadu_ps(p.a + o) : _mm256_setzero_ps();
    const __m256 b = mapped ? _mm256_loadu_ps(p.b + o) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < P; ++q) {
      const int64_t at = (m0 + q) * O + o;
      // [f0 f4 f1 f5 f2 f6 f3 f7] -> [f0 .. f7]
      const __m256i mixed = _mm256_or_si256(acc[q][2 * g], _mm256_slli_epi64(acc[q][2 * g + 1], 32));
      const __m256i sums = _mm256_permutevar8x32_epi32(mixed, order);
      if (o + kLanes <= O && p.sums) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.sums + at), sums);
      } else if (mapped) {
        store_outputs8(a, b, _mm256_cvtepi32_ps(sums), residual, relu, y, at);
      } else {
        alignas(32) int32_t words[kLanes];
        _mm256_store_si256(reinterpret_cast<__m256i*>(words), sums);
        int64_t wide[kLanes];
        for (int f = 0; f < kLanes; ++f) wide[f] = words[f];
        store8(p, m0 + q, g0 + g, wide);
      }
    }
  }
}

template <int P, int G>
struct Avx512 {
  static constexpr int kPositions = 4, kGroups = 2;
  static void run(const Problem& p, const uint8_t* const* xw, int64_t g, int64_t m) { block_avx512<P, G>(p, xw, g, m); }
};
// 4 positions x 16 filters as Avx512, unrolled (8 x 16 was slower at 64 channels)
template <int KH, int T>
struct Avx512Unrolled {
  template <int P, int G>
  struct Block {
    static constexpr int kPositions = 4, kGroups = 2;
    static void run(const Problem& p, const uint8_t* const* xw, int64_t g, int64_t m) {
      block_avx512_unrolled<P, G, KH, T>(p, xw, g, m);
    }
  };
};
template <int P, int G>
struct Avx2 {
  static constexpr int kPositions = 4, kGroups = 1;
  static void run(const Problem& p, const uint8_t* const* xw, int64_t g, int64_t m) { block_avx2<P, G>(p, xw, g, m); }
};

// Blocks of B positions x G filter groups, as many as the registers allow (Kernel::kPositions, kGroups);
// leftovers in blocks of 1 position or 1 group.
template <template <int, int> class Kernel>
void positions_blocked(const Problem& p, int64_t begin, int64_t end) {
  constexpr int B = Kernel<1, 1>::kPositions, G = Kernel<1, 1>::kGroups;
  const int64_t groups = (p.O + kLanes - 1) / kLanes;
  int64_t m = begin;
  Positions at(p, m);  // window pointers by counting, not dividing (divisions cost as much as small layers' sums)
  for (; m + B <= end; m += B) {
    const uint8_t* xw[B];
    for (int q = 0; q < B; ++q) xw[q] = at.next();
    int64_t g = 0;
    for (; g + G <= groups; g += G) Kernel<B, G>::run(p, xw, g, m);
    for (; g < groups; ++g) Kernel<B, 1>::run(p, xw, g, m);
  }
  for (; m < end; ++m) {
    const uint8_t* xw[1] = {at.next()};
    int64_t g = 0;
    for (; g + G <= groups; g += G) Kernel<1, G>::run(p, xw, g, m);
    for (; g < groups; ++g) Kernel<1, 1>::run(p, xw, g, m);
  }
}

#endif  // ADDERNET_X86

// Which instructions this CPU runs; ADDERNET_SAD_ISA=avx2|portable forces a slower path (for tests).
const char* chosen_isa() {
  static const char* isa = [] {
    const char* forced = std::getenv("ADDERNET_SAD_ISA");
#ifdef ADDERNET_X86
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512dq");
    const bool avx2 = __builtin_cpu_supports("avx2");
    if (forced && std::strcmp(forced, "portable") == 0) return "portable";
    if (forced && std::strcmp(forced, "avx2") == 0 && avx2) return "avx2";
    if (avx512) return "avx512bw";
    if (avx2) return "avx2";
#else
    (void)forced;
#endif
    return "portable";
  }();
  return isa;
}

// q = clamp(round_half_even(x * inv + zp), 0, 255), as quantize() in int8.py; a libm rounding call would cost
// more than the whole layer, so: clamp, then add and subtract 1.5 * 2^23, which leaves no fraction bits.
inline uint8_t quantize_one(float x, float inv, float zp) {
  const float v = std::min(255.0f, std::max(0.0f, x * inv + zp));
  return static_cast<uint8_t>((v + 12582912.0f) - 12582912.0f);
}

using QuantizeRow = void (*)(const float*, uint8_t*, int64_t, float, float);

void quantize_row_portable(const float* src, uint8_t* dst, int64_t count, float inv, float zp) {
  for (int64_t k = 0; k < count; ++k) dst[k] = quantize_one(src[k], inv, zp);
}

#ifdef ADDERNET_X86
// mul then add (no fused multiply-add), then clamp: the same float operations as quantize_one; the conversion
// rounds half to even (the default rounding mode). Where saturating packs turn the 32-bit codes into bytes,
// they clamp below 0 (a negative value, -inf or NaN, whose conversion gives INT_MIN, packs to 0 as the clamp
// gives it), so only the clamp to 255 stays (above 2^31 the conversion would give INT_MIN).
__attribute__((target("avx2"))) void quantize_row_avx2(const float* __restrict__ src, uint8_t* __restrict__ dst,
                                                       int64_t count, float inv, float zp) {
  const __m256 vinv = _mm256_set1_ps(inv), vzp = _mm256_set1_ps(zp), hi = _mm256_set1_ps(255.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t k = 0;
  for (; k + 32 <= count; k += 32) {
    __m256i q[4];
    for (int t = 0; t < 4; ++t) {
      const __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(src + k + 8 * t), vinv), vzp);
      q[t] = _mm256_cvtps_epi32(_mm256_min_ps(hi, v));
    }
    const __m256i words = _mm256_packus_epi32(q[0], q[1]), words2 = _mm256_packus_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words2), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), bytes);
  }
  quantize_row_portable(src + k, dst + k, count - k, inv, zp);
}

__attribute__((target("avx512f,avx512bw"))) void quantize_row_avx512(const float* __restrict__ src,
                                                                    uint8_t* __restrict__ dst, int64_t count,
                                                                    float inv, float zp) {
  const __m512 vinv = _mm512_set1_ps(inv), vzp = _mm512_set1_ps(zp);
  const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
  // 64 values a round, packed to bytes by two rounds of saturating packs (which interleave the four vectors'
  // 128-bit lanes) and one permutation of 32-bit words back into order: fewer operations than a clamp below and
  // a conversion to bytes for each vector (on Zen 5, ResNet-20's padded maps of one image 1.04-1.1x, 1.4x and
  // 1.5-2.0x as fast, alone in a loop); 16 at a time for the rest
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t k = 0;
  for (; k + 64 <= count; k += 64) {
    __m512i q[4];
    for (int t = 0; t < 4; ++t) {
      const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(src + k + 16 * t), vinv), vzp);
      q[t] = _mm512_cvtps_epi32(_mm512_min_ps(hi, v));
    }
    const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]), _mm512_packus_epi32(q[2], q[3]));
    _mm512_storeu_si512(dst + k, _mm512_permutexvar_epi32(order, bytes));
  }
  for (; k + 16 <= count; k += 16) {
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(src + k), vinv), vzp);
    v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  quantize_row_portable(src + k, dst + k, count - k, inv, zp);
}
#endif

QuantizeRow quantize_row_for(const char* isa) {
#ifdef ADDERNET_X86
  if (std::strcmp(isa, "avx512bw") == 0) return quantize_row_avx512;
  if (std::strcmp(isa, "avx2") == 0) return quantize_row_avx2;
#endif
  return quantize_row_portable;
}

constexpr int64_t kSlack = 64;  // bytes readable past the padded input (the last 8-byte loads)

// Work below which a loop stays on one thread: starting and joining threads costs more than small layers take
// (ResNet-20 at batch 1: 2.4M terms per layer, about 25 microseconds on one core; two threads were slower).
constexpr int64_t kMinTermsPerThread = int64_t{1} << 22;
constexpr int64_t kMinBytesPerThread = 64 << 10;

// Quantise and pad N float maps (N, H, W, C) into uint8 (N, H + 2 padding, W + 2 padding, C), the padding the
// zero point's byte, and zero the kSlack bytes after them (q holds N * Hp * Wp * C + kSlack).
void quantize_pad(const float* xs, uint8_t* q, int64_t N, int64_t H, int64_t W, int64_t C, int64_t padding,
                  float inv, int64_t zero_point) {
  const int64_t Hp = H + 2 * padding, Wp = W + 2 * padding, row = Wp * C, side = padding * C;
  std::memset(q + N * Hp * row, 0, kSlack);
  const float zp = static_cast<float>(zero_point);
  const QuantizeRow quantize_row = quantize_row_for(chosen_isa());
  auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Hp, h = r % Hp - padding;
      uint8_t* dst = q + r * row;
      if (h < 0 || h >= H) {
        std::memset(dst, static_cast<int>(zero_point), row);
        continue;
      }
      if (side > 0) {
        std::memset(dst, static_cast<int>(zero_point), side);
        std::memset(dst + side + W * C, static_cast<int>(zero_point), side);
      }
      quantize_row(xs + (n * H + h) * W * C, dst + side, W * C, inv, zp);
    }
  };
  // where ATen's loop would stay on one thread, without it (its setup cost a few percent of a small layer)
  const int64_t grain = std::max<int64_t>(1, kMinBytesPerThread / row);
  if (N * Hp <= grain) return rows(0, N * Hp);
  at::parallel_for(0, N * Hp, grain, rows);
}

// The sums and the output map of every position of p (threads take whole blocks of positions).
void sums_and_outputs(const Problem& p, int64_t N) {
  const int64_t M = N * p.Ho * p.Wo;
  constexpr int64_t kUnit = 12;
#ifdef ADDERNET_X86
  static_assert(kUnit % Avx2<1, 1>::kPositions == 0 && kUnit % Avx512<1, 1>::kPositions == 0 &&
                kUnit % Avx512Unrolled<3, 6>::Block<1, 1>::kPositions == 0);
#endif
  const char* isa = chosen_isa();
  const int64_t terms_per_unit = kUnit * p.O * p.kh * p.kw * p.C;
  at::parallel_for(0, (M + kUnit - 1) / kUnit, std::max<int64_t>(1, kMinTermsPerThread / terms_per_unit),
                   [&](int64_t begin, int64_t end) {
    const int64_t m0 = kUnit * begin, m1 = std::min(M, kUnit * end);
#ifdef ADDERNET_X86
    if (std::strcmp(isa, "avx512bw") == 0 && p.kh == 3 && tail_mask(p) == ~0ULL) {
      if (p.groups == 6) return positions_blocked<Avx512Unrolled<3, 6>::Block>(p, m0, m1);
      if (p.groups == 12) return positions_blocked<Avx512Unrolled<3, 12>::Block>(p, m0, m1);
      if (p.groups == 24) return positions_blocked<Avx512Unrolled<3, 24>::Block>(p, m0, m1);
    }
    if (std::strcmp(isa, "avx512bw") == 0) return positions_blocked<Avx512>(p, m0, m1);
    if (std::strcmp(isa, "avx2") == 0) return positions_blocked<Avx2>(p, m0, m1);
#endif
    positions_portable(p, m0, m1);
  });
}

// The checks both entry points make of one layer's arguments; returns (Ho, Wo).
std::pair<int64_t, int64_t> check_layer(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b, int64_t C,
                                        int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t stride,
                                        int64_t padding, int64_t zero_point) {
  const int64_t O = a.numel();
  TORCH_CHECK(kh >= 1 && kw >= 1, "the kernel must be at least 1 x 1");
  TORCH_CHECK(w.dim() == 5 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(3) == kLanes &&
              w.size(4) == 8, "w must come from sad_pack");
  TORCH_CHECK(zero_point >= 0 && zero_point <= 255, "zero_point must be in [0, 255]");
  TORCH_CHECK(w.size(0) == (O + kLanes - 1) / kLanes && w.size(1) == kh && w.size(2) == (kw * C + 7) / 8,
              "w does not fit the input");
  TORCH_CHECK(b.numel() == O && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
              a.is_contiguous() && b.is_contiguous(), "a and b need one float32 value per filter");
  TORCH_CHECK(C > 0 && O > 0 && H > 0 && W > 0, "x and the filters need at least one channel, pixel and filter");
  TORCH_CHECK(255 * kh * kw * C < (int64_t{1} << 31), "a window of more than 8.4M bytes: its sums overflow 32 bits");
  TORCH_CHECK(stride >= 1 && padding >= 0, "stride must be >= 1 and padding >= 0");
  const int64_t Hp = H + 2 * padding, Wp = W + 2 * padding;
  TORCH_CHECK(Hp >= kh && Wp >= kw, "the kernel is larger than the padded input");
  return {(Hp - kh) / stride + 1, (Wp - kw) / stride + 1};
}

}  // namespace

// x: float (N, C, H, W), best channels-last in memory (other layouts are copied); w: uint8 filters from
// sad_pack; a, b: float (O). Returns (N, O, Ho, Wo), channels last: consecutive layers pass maps without copies,
// and a layer costs one call from Python (each extra tensor operation cost several microseconds: at batch 1
// that was a third of the network's time).
at::Tensor sad_forward(const at::Tensor& input, double inv_scale, int64_t zero_point, const at::Tensor& w, int64_t kh,
                       int64_t kw, int64_t stride, int64_t padding, const at::Tensor& a, const at::Tensor& b,
                       const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK(input.dim() == 4, "x must be (N, C, H, W)");
  const at::Tensor x = input.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor af = a.contiguous().to(at::kFloat), bf = b.contiguous().to(at::kFloat);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = af.numel();
  TORCH_CHECK(N > 0, "x needs at least one image");
  const auto [Ho, Wo] = check_layer(w, af, bf, C, H, W, kh, kw, stride, padding, zero_point);
  const int64_t Hp = H + 2 * padding, Wp = W + 2 * padding;

  // quantise and pad, channels last, with slack for the last vector loads
  at::Tensor xq = at::empty({N * Hp * Wp * C + kSlack}, x.options().dtype(at::kByte));
  quantize_pad(x.data_ptr<float>(), xq.data_ptr<uint8_t>(), N, H, W, C, padding, static_cast<float>(inv_scale),
               zero_point);

  at::Tensor y = at::empty({N, O, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor res;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == y.sizes(), "residual must have the output's shape (N, O, Ho, Wo)");
    res = residual->to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  }
  const Problem p{xq.data_ptr<uint8_t>(), w.data_ptr<uint8_t>(), af.data_ptr<float>(), bf.data_ptr<float>(),
                  y.data_ptr<float>(), res.defined() ? res.data_ptr<float>() : nullptr, relu, Hp, Wp, C, O, kh, kw,
                  Ho, Wo, stride, kw * C, w.size(2)};
  sums_and_outputs(p, N);
  return y;
}

// The sums alone: x uint8 (N, C, Hp, Wp), already padded, channels last in memory; w from sad_pack for O filters.
// Returns int32 (N, O, Ho, Wo), channels last: sum_k |x - w| for each position and filter, exactly. What the
// benchmark times as the kernel's inner loop (no quantisation, no output map): computed `repeats` times over,
// into the same memory, so that a timed call is long enough to time and pays for no fresh memory.
at::Tensor sad_sums(const at::Tensor& xq, const at::Tensor& w, int64_t O, int64_t kh, int64_t kw, int64_t stride,
                    int64_t repeats) {
  TORCH_CHECK(repeats >= 1, "repeats must be >= 1");
  TORCH_CHECK(xq.dim() == 4 && xq.scalar_type() == at::kByte && xq.size(0) > 0, "x must be uint8 (N, C, Hp, Wp)");
  const at::Tensor x = xq.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), Hp = x.size(2), Wp = x.size(3);
  const at::Tensor a = at::ones({O}, x.options().dtype(at::kFloat)), b = at::zeros({O}, a.options());
  const auto [Ho, Wo] = check_layer(w, a, b, C, Hp, Wp, kh, kw, stride, 0, 0);
  // the loads of a row's last byte group reach past its end when the row is not whole groups: then a copy
  // with slack after it
  at::Tensor padded = x;
  if ((kw * C) % 8 != 0) {
    padded = at::zeros({N * Hp * Wp * C + kSlack}, x.options().memory_format(at::MemoryFormat::Contiguous));
    std::memcpy(padded.data_ptr<uint8_t>(), x.data_ptr<uint8_t>(), N * Hp * Wp * C);
  }
  at::Tensor sums =
      at::empty({N, O, Ho, Wo}, x.options().dtype(at::kInt).memory_format(at::MemoryFormat::ChannelsLast));
  Problem p{padded.data_ptr<uint8_t>(), w.data_ptr<uint8_t>(), a.data_ptr<float>(), b.data_ptr<float>(), nullptr,
            nullptr, false, Hp, Wp, C, O, kh, kw, Ho, Wo, stride, kw * C, w.size(2)};
  p.sums = sums.data_ptr<int32_t>();
  for (int64_t r = 0; r < repeats; ++r) sums_and_outputs(p, N);
  return sums;
}

namespace {

// ---- a network's body in one call ---------------------------------------------------------------------------
//
// Layers runs a chain of int8 adder layers (a ResNet's stages) as sad_forward would run them one by one, with
// the same arithmetic (so bit for bit the same result), but: one call from Python for all of them; images
// taken one at a time through the whole chain (each image's maps, a few tens of KB, stay in the core's cache
// from one layer to the next; threads take whole images, so they never wait for each other between layers);
// and the maps between layers in per-thread buffers kept from call to call (fresh memory for every map cost
// page faults, a quarter of the network's time at batch 64). Fewer images than threads: all images go
// through each layer together, the layer's positions shared among the threads as in sad_forward.

// One layer of a body: kSpec integers each (see Layers), maps numbered as written (map 0 is the input).
constexpr int64_t kSpec = 9;
struct BodyLayer {
  const uint8_t* w;
  const float *a, *b;
  float inv;
  int64_t kh, kw, stride, padding, zero_point, input, residual;
  bool relu;
  int64_t groups;  // the packed filters' byte groups per window row
};
struct MapShape {
  int64_t C, H, W;
  int64_t values() const { return C * H * W; }
};

// What one thread keeps between calls: the maps of the images it runs, the quantised input of one layer; for
// Network, the stem's map and the body's last map too.
struct BodyBuffers {
  std::vector<float> maps;
  std::vector<uint8_t> quantized;
  std::vector<float> stem, last;
};

BodyBuffers& thread_buffers() {
  static thread_local BodyBuffers buffers;
  return buffers;
}

struct Body {
  std::vector<BodyLayer> layers;
  std::vector<MapShape> maps;      // maps[l + 1] is layer l's output
  std::vector<int64_t> slot;       // where each intermediate map lives (maps sharing a slot never live together)
  std::vector<int64_t> slot_offset;  // per image, in floats; the last entry is the total
  int64_t quantized_bytes = 0;     // the largest padded input, per image

  // images [n0, n0 + count) of x (N, H, W, C) through every layer into y
  void run(const float* x, float* y, int64_t n0, int64_t count) const {
    BodyBuffers& buf = thread_buffers();
    const size_t floats = static_cast<size_t>(slot_offset.back() * count);
    const size_t bytes = static_cast<size_t>(quantized_bytes * count + kSlack);
    if (buf.maps.size() < floats) buf.maps.resize(floats);
    if (buf.quantized.size() < bytes) buf.quantized.resize(bytes);
    const int64_t last = static_cast<int64_t>(layers.size());
    auto map_at = [&](int64_t m) -> float* {
      if (m == 0) return const_cast<float*>(x) + n0 * maps[0].values();
      if (m == last) return y + n0 * maps[last].values();
      return buf.maps.data() + slot_offset[slot[m]] * count;
    };
    for (int64_t l = 0; l < last; ++l) {
      const BodyLayer& L = layers[l];
      const MapShape& in = maps[L.input];
      const MapShape& out = maps[l + 1];
      const int64_t Hp = in.H + 2 * L.padding, Wp = in.W + 2 * L.padding;
      uint8_t* q = buf.quantized.data();
      quantize_pad(map_at(L.input), q, count, in.H, in.W, in.C, L.padding, L.inv, L.zero_point);
      const Problem p{q, L.w, L.a, L.b, map_at(l + 1), L.residual >= 0 ? map_at(L.residual) : nullptr, L.relu,
                      Hp, Wp, in.C, out.C, L.kh, L.kw, out.H, out.W, L.stride, L.kw * in.C, L.groups};
      sums_and_outputs(p, count);
    }
  }
};

// fn(n0, count) for images [n0, n0 + count) of N: whole images for each thread where there are at least as many
// as threads, else all of them together (fn then shares each layer's work among the threads). Each thread takes
// the next image not yet taken, so a thread that starts late (woken from sleep) or runs slower (a core shared
// with another program) takes fewer, and the others are not left waiting for it at the end.
template <typename Images>
void for_images(int64_t N, const Images& fn) {
  const int64_t threads = at::get_num_threads();
  if (N < threads) return fn(0, N);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    try {
      for (int64_t n; (n = next.fetch_add(1, std::memory_order_relaxed)) < N;) fn(n, 1);
    } catch (...) {
      next.store(N);  // the others stop at their next image; parallel_for passes the error on
      throw;
    }
  });
}

// The body of Layers' arguments (see there) for an input map of input_map's shape, checked.
Body make_body(const char* op, const MapShape& input_map, at::TensorList w, at::TensorList a, at::TensorList b,
               at::IntArrayRef spec, at::ArrayRef<double> inv_scale) {
  const int64_t L = static_cast<int64_t>(w.size());
  TORCH_CHECK(L > 0 && static_cast<int64_t>(a.size()) == L && static_cast<int64_t>(b.size()) == L &&
              static_cast<int64_t>(inv_scale.size()) == L && static_cast<int64_t>(spec.size()) == kSpec * L,
              op, ": w, a, b, inv_scale and spec must describe the same layers (kSpec integers each)");
  Body body;
  body.maps.push_back(input_map);
  std::vector<int64_t> last_use(L + 1, -1);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t* s = spec.data() + kSpec * l;
    BodyLayer layer{nullptr, nullptr, nullptr, static_cast<float>(inv_scale[l]),
                    s[0], s[1], s[2], s[3], s[4], s[6], s[7], s[8] != 0, 0};
    TORCH_CHECK(layer.input >= 0 && layer.input <= l && layer.residual >= -1 && layer.residual <= l,
                op, ": layer ", l, " reads a map not yet written");
    const MapShape in = body.maps[layer.input];
    TORCH_CHECK(s[5] == in.C, op, ": layer ", l, " takes ", s[5], " channels, its input map has ", in.C);
    const auto [Ho, Wo] = check_layer(w[l], a[l], b[l], in.C, in.H, in.W, layer.kh, layer.kw, layer.stride,
                                      layer.padding, layer.zero_point);
    const MapShape out{a[l].numel(), Ho, Wo};
    if (layer.residual >= 0) {
      const MapShape r = body.maps[layer.residual];
      TORCH_CHECK(r.C == out.C && r.H == out.H && r.W == out.W, op, ": layer ", l,
                  "'s residual must have its output's shape");
      last_use[layer.residual] = l;
    }
    last_use[layer.input] = l;
    layer.w = w[l].data_ptr<uint8_t>();
    layer.a = a[l].data_ptr<float>();
    layer.b = b[l].data_ptr<float>();
    layer.groups = w[l].size(2);
    body.quantized_bytes =
        std::max(body.quantized_bytes, (in.H + 2 * layer.padding) * (in.W + 2 * layer.padding) * in.C);
    body.layers.push_back(layer);
    body.maps.push_back(out);
  }
  // intermediate maps into slots: a slot is free again once every layer that reads its map has run
  std::vector<int64_t> slot_size, slot_map;
  body.slot.assign(L + 1, -1);
  for (int64_t m = 1; m < L; ++m) {
    int64_t chosen = -1;
    for (size_t s = 0; s < slot_map.size(); ++s)
      if (last_use[slot_map[s]] < m - 1) chosen = static_cast<int64_t>(s);  // (-1: never read)
    if (chosen < 0) {
      chosen = static_cast<int64_t>(slot_map.size());
      slot_map.push_back(m);
      slot_size.push_back(0);
    }
    slot_map[chosen] = m;
    slot_size[chosen] = std::max(slot_size[chosen], body.maps[m].values());
    body.slot[m] = chosen;
  }
  body.slot_offset.assign(slot_size.size() + 1, 0);
  for (size_t s = 0; s < slot_size.size(); ++s) body.slot_offset[s + 1] = body.slot_offset[s] + slot_size[s];

  return body;
}

}  // namespace

// uint8 filters (O, C, kh, kw) -> the packed layout described at the top
at::Tensor sad_pack(const at::Tensor& qw) {
  TORCH_CHECK(qw.dim() == 4 && qw.scalar_type() == at::kByte, "filters must be uint8 (O, C, kh, kw)");
  const int64_t O = qw.size(0), C = qw.size(1), kh = qw.size(2), kw = qw.size(3), run = kw * C;
  const int64_t groups = (O + kLanes - 1) / kLanes, T = (run + 7) / 8;
  const at::Tensor rows = qw.permute({0, 2, 3, 1}).contiguous();  // (O, kh, kw, C): a window row is contiguous
  at::Tensor packed = at::zeros({groups, kh, T, kLanes, 8}, qw.options());
  const uint8_t* src = rows.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t u = 0; u < kh; ++u)
      for (int64_t k = 0; k < run; ++k)
        dst[(((o / kLanes) * kh + u) * T + k / 8) * kLanes * 8 + (o % kLanes) * 8 + k % 8] =
            src[(o * kh + u) * run + k];
  return packed;
}

std::string sad_isa() { return chosen_isa(); }

namespace {

// A float convolution with few input channels (a network's stem: 3 colour channels), + bias, optional ReLU,
// channels last in and out. PyTorch runs such a convolution on a slow path at small batches (at batch 1 it
// took a tenth of the int8 ResNet-20's time). Each output pixel's O values accumulate over the window: with
// AVX-512, 3x3 windows at stride 1, in vectors of 16 filters for blocks of pixels (below); otherwise on AVX2 in
// G vectors of 8 filters held in registers (O = 8G); else in a plain loop. w: (k, k, C, O).
struct SmallConv {
  const float *x, *w, *bias;
  float* y;
  int64_t H, W, C, O, k, stride, padding, Ho, Wo;
  bool relu;
};

// one output pixel anywhere (the window's parts outside the map are zero padding), in plain C++
void small_conv_pixel(const SmallConv& p, int64_t n, int64_t i, int64_t j) {
  float* out = p.y + ((n * p.Ho + i) * p.Wo + j) * p.O;
  for (int64_t o = 0; o < p.O; ++o) out[o] = p.bias[o];
  for (int64_t u = 0; u < p.k; ++u) {
    const int64_t h = i * p.stride + u - p.padding;
    for (int64_t v = 0; v < p.k && h >= 0 && h < p.H; ++v) {
      const int64_t c0 = j * p.stride + v - p.padding;
      if (c0 < 0 || c0 >= p.W) continue;
      const float* in = p.x + ((n * p.H + h) * p.W + c0) * p.C;
      const float* wr = p.w + (u * p.k + v) * p.C * p.O;
      for (int64_t c = 0; c < p.C; ++c)
        for (int64_t o = 0; o < p.O; ++o) out[o] += in[c] * wr[c * p.O + o];
    }
  }
  if (p.relu)
    for (int64_t o = 0; o < p.O; ++o) out[o] = std::max(out[o], 0.0f);
}

void small_conv_rows(const SmallConv& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r)
    for (int64_t j = 0; j < p.Wo; ++j) small_conv_pixel(p, r / p.Ho, r % p.Ho, j);
}

#ifdef ADDERNET_X86
// Q pixels of one output row: each window row is one run of k * C inputs (channels last), the filters' row
// too, unless the window reaches past the map's sides (Checked: then column by column, the rest is zero
// padding). Q pixels at once give Q * G independent sums (one pixel's G chains of dependent additions were
// bound by the latency of the addition). Fused multiply-adds: a float layer, rounded as PyTorch's own
// convolutions round it (they use them too), not bit for bit.
template <int G, int Q>
__attribute__((target("avx2,fma"), always_inline)) inline void small_conv_run(__m256 (&acc)[Q][G], const float* in,
                                                                              const float* wr, int64_t count,
                                                                              int64_t pixel_step) {
  for (int64_t t = 0; t < count; ++t) {
    __m256 value[Q];
    for (int q = 0; q < Q; ++q) value[q] = _mm256_set1_ps(in[q * pixel_step + t]);
    for (int g = 0; g < G; ++g) {
      const __m256 weight = _mm256_loadu_ps(wr + (t * G + g) * 8);
      for (int q = 0; q < Q; ++q) acc[q][g] = _mm256_fmadd_ps(value[q], weight, acc[q][g]);
    }
  }
}

template <int Q, int G, bool Checked>
__attribute__((target("avx2,fma"))) inline void small_conv_pixels(const SmallConv& p, int64_t n, int64_t i,
                                                                  int64_t j) {
  const int64_t run = p.k * p.C, first = j * p.stride - p.padding;
  __m256 acc[Q][G];
  for (int q = 0; q < Q; ++q)
    for (int g = 0; g < G; ++g) acc[q][g] = _mm256_loadu_ps(p.bias + 8 * g);
  for (int64_t u = 0; u < p.k; ++u) {
    const int64_t h = i * p.stride + u - p.padding;
    if (h < 0 || h >= p.H) continue;
    const float* row = p.x + (n * p.H + h) * p.W * p.C;
    const float* wr = p.w + u * run * 8 * G;
    if (!Checked) {
      small_conv_run<G, Q>(acc, row + first * p.C, wr, run, p.stride * p.C);
      continue;
    }
    for (int64_t v = 0; v < p.k; ++v)
      if (first + v >= 0 && first + v < p.W)
        small_conv_run<G, Q>(acc, row + (first + v) * p.C, wr + v * p.C * 8 * G, p.C, p.stride * p.C);
  }
  float* out = p.y + ((n * p.Ho + i) * p.Wo + j) * 8 * G;
  for (int q = 0; q < Q; ++q)
    for (int g = 0; g < G; ++g)
      _mm256_storeu_ps(out + (q * G + g) * 8, p.relu ? _mm256_max_ps(acc[q][g], _mm256_setzero_ps()) : acc[q][g]);
}

// AVX-512, 3x3 windows at stride 1 (the CIFAR stem): Q pixels of a row at once against G vectors of 16 filters,
// each input value broadcast once for all the pixels whose windows hold it (Q + 2 broadcasts a window row and
// channel, where the AVX2 loop above broadcasts 3Q), the 3 x G filter vectors of a window row and channel
// loaded once for them all. On AMD Zen 5 1.4-1.7x the AVX2 loop's speed on ResNet-20's stem, side by side.
template <int Q, int G>
__attribute__((target("avx512f"))) void small_conv_pixels_avx512(const SmallConv& p, int64_t n, int64_t i,
                                                                 int64_t j) {
  constexpr int K = 3;
  const int64_t C = p.C, first = j - p.padding;
  __m512 acc[Q][G];
  for (int q = 0; q < Q; ++q)
    for (int g = 0; g < G; ++g) acc[q][g] = _mm512_loadu_ps(p.bias + 16 * g);
  for (int u = 0; u < K; ++u) {
    const int64_t h = i + u - p.padding;
    if (h < 0 || h >= p.H) continue;
    const float* row = p.x + ((n * p.H + h) * p.W + first) * C;
    for (int64_t c = 0; c < C; ++c) {
      __m512 weight[K][G];
      for (int v = 0; v < K; ++v)
        for (int g = 0; g < G; ++g) weight[v][g] = _mm512_loadu_ps(p.w + ((u * K + v) * C + c) * p.O + 16 * g);
#pragma GCC unroll 32
      for (int e = 0; e < Q + K - 1; ++e) {  // the input's columns; pixel q takes column e with its tap e - q
        const __m512 value = _mm512_set1_ps(row[e * C + c]);
#pragma GCC unroll 4
        for (int v = 0; v < K; ++v)
          if (e - v >= 0 && e - v < Q)
            for (int g = 0; g < G; ++g) acc[e - v][g] = _mm512_fmadd_ps(value, weight[v][g], acc[e - v][g]);
      }
    }
  }
  float* out = p.y + ((n * p.Ho + i) * p.Wo + j) * p.O;
  for (int q = 0; q < Q; ++q)
    for (int g = 0; g < G; ++g)
      _mm512_storeu_ps(out + q * p.O + 16 * g, p.relu ? _mm512_max_ps(acc[q][g], _mm512_setzero_ps()) : acc[q][g]);
}

// The pixels whose windows lie inside the map in blocks of Q (the last block moved back to end with them: a
// few pixels computed twice, alike), the others one at a time on the AVX2 path (8 filters a vector).
template <int Q, int G>
__attribute__((target("avx512f"))) void small_conv_rows_avx512(const SmallConv& p, int64_t begin, int64_t end) {
  const int64_t inside_from = std::min(p.Wo, p.padding);
  const int64_t inside_to = std::max(inside_from, std::min(p.Wo, p.W + p.padding - 2));
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / p.Ho, i = r % p.Ho;
    int64_t j = 0;
    for (; j < inside_from; ++j) small_conv_pixels<1, 2 * G, true>(p, n, i, j);
    if (inside_to - inside_from >= Q) {
      for (; j + Q <= inside_to; j += Q) small_conv_pixels_avx512<Q, G>(p, n, i, j);
      if (j < inside_to) small_conv_pixels_avx512<Q, G>(p, n, i, inside_to - Q);
      j = inside_to;
    }
    for (; j < p.Wo; ++j) small_conv_pixels<1, 2 * G, true>(p, n, i, j);
  }
}

template <int G>
__attribute__((target("avx2,fma"))) void small_conv_rows_avx2(const SmallConv& p, int64_t begin, int64_t end) {
  constexpr int Q = G <= 2 ? 4 : 1;  // Q * G accumulators, Q broadcasts and a weight vector in 16 registers
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / p.Ho, i = r % p.Ho;
    for (int64_t j = 0; j < p.Wo;) {
      const int64_t first = j * p.stride - p.padding;
      if (j + Q <= p.Wo && first >= 0 && (j + Q - 1) * p.stride - p.padding + p.k <= p.W) {
        small_conv_pixels<Q, G, false>(p, n, i, j);
        j += Q;
      } else {
        small_conv_pixels<1, G, true>(p, n, i, j++);
      }
    }
  }
}
#endif

}  // namespace

// whether small_conv has a vector path for O filters on this CPU (else a plain loop, slower than PyTorch's)
bool small_conv_is_fast(int64_t O) {
#ifdef ADDERNET_X86
  static const bool fma = __builtin_cpu_supports("fma");
  return std::strcmp(chosen_isa(), "portable") != 0 && fma && (O == 8 || O == 16 || O == 32 || O == 64);
#else
  (void)O;
  return false;
#endif
}

namespace {

// output rows [begin, end) of the N * Ho, on the vector path where there is one
void small_conv_range(const SmallConv& p, int64_t begin, int64_t end) {
#ifdef ADDERNET_X86
  if (small_conv_is_fast(p.O) && std::strcmp(chosen_isa(), "avx512bw") == 0 && p.k == 3 && p.stride == 1) {
    switch (p.O / 16) {  // 16 to 64 filters: Q x G = 16 accumulators, the 3G filter vectors beside them
      case 1: return small_conv_rows_avx512<16, 1>(p, begin, end);
      case 2: return small_conv_rows_avx512<8, 2>(p, begin, end);
      case 4: return small_conv_rows_avx512<4, 4>(p, begin, end);
      default: break;
    }
  }
  if (small_conv_is_fast(p.O)) {
    switch (p.O / 8) {
      case 1: return small_conv_rows_avx2<1>(p, begin, end);
      case 2: return small_conv_rows_avx2<2>(p, begin, end);
      case 4: return small_conv_rows_avx2<4>(p, begin, end);
      case 8: return small_conv_rows_avx2<8>(p, begin, end);
      default: break;
    }
  }
#endif
  small_conv_rows(p, begin, end);
}

// N images' rows, shared among the threads where there are enough of them
void small_conv_images(const SmallConv& p, int64_t N) {
  const int64_t grain = std::max<int64_t>(1, kMinTermsPerThread / (p.Wo * p.O * p.k * p.k * p.C));
  if (N * p.Ho <= grain) return small_conv_range(p, 0, N * p.Ho);
  at::parallel_for(0, N * p.Ho, grain, [&](int64_t begin, int64_t end) { small_conv_range(p, begin, end); });
}

// a stem's weight (O, C, k, k), checked, in the loop's order (k, k, C, O), float32
at::Tensor small_conv_filters(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.numel() > 0,
              "the stem needs a square (O, C, k, k) weight");
  return weight.to(at::kFloat).permute({2, 3, 1, 0}).contiguous();
}

// The loop's arguments for images x (float (N, C, H, W), channels last) through the filters of
// small_conv_filters and their bias (float32, contiguous), checked; the output map's pointer left unset.
SmallConv small_conv_args(const char* op, const at::Tensor& x, const at::Tensor& filters, const at::Tensor& bias,
                          int64_t stride, int64_t padding, bool relu) {
  const int64_t k = filters.size(0), C = filters.size(2), O = filters.size(3);
  TORCH_CHECK(bias.numel() == O && bias.scalar_type() == at::kFloat && bias.is_contiguous(), op,
              ": the stem needs ", O, " float32 biases, contiguous");
  TORCH_CHECK(x.dim() == 4 && x.size(0) > 0 && x.size(1) == C && x.numel() > 0, op, ": x must be (N, ", C,
              ", H, W) with at least one image");
  TORCH_CHECK(stride >= 1 && padding >= 0, op, ": the stem needs stride >= 1 and padding >= 0");
  const int64_t H = x.size(2), W = x.size(3);
  TORCH_CHECK(H + 2 * padding >= k && W + 2 * padding >= k, op, ": the kernel is larger than the padded input");
  return {x.data_ptr<float>(), filters.data_ptr<float>(), bias.data_ptr<float>(), nullptr, H, W, C, O, k, stride,
          padding, (H + 2 * padding - k) / stride + 1, (W + 2 * padding - k) / stride + 1, relu};
}

}  // namespace

// x: float (N, C, H, W); weight (O, C, k, k); bias (O). Returns (N, O, Ho, Wo), channels last.
at::Tensor small_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, int64_t stride,
                      int64_t padding, bool relu) {
  TORCH_CHECK(input.dim() == 4, "small_conv: x must be (N, C, H, W)");
  const at::Tensor x = input.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor filters = small_conv_filters(weight), b = bias.to(at::kFloat).contiguous();
  SmallConv p = small_conv_args("small_conv", x, filters, b, stride, padding, relu);
  at::Tensor y = at::empty({x.size(0), p.O, p.Ho, p.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  p.y = y.data_ptr<float>();
  small_conv_images(p, x.size(0));
  return y;
}

namespace {

// The global mean of each image's map s (H, W, C), then logits = W mean + bias. In float, the positions added
// in order: PyTorch's mean adds in another order, so the logits differ from its in the last bits.
void global_mean_linear(const float* maps, int64_t count, const MapShape& s, const float* W, const float* bias,
                        int64_t classes, float* logits) {
  std::vector<float> mean(s.C);
  const float positions = static_cast<float>(s.H * s.W);
  for (int64_t n = 0; n < count; ++n) {
    const float* map = maps + n * s.values();
    std::fill(mean.begin(), mean.end(), 0.0f);
    for (int64_t at = 0; at < s.H * s.W; ++at)
      for (int64_t c = 0; c < s.C; ++c) mean[c] += map[at * s.C + c];
    for (int64_t c = 0; c < s.C; ++c) mean[c] /= positions;
    for (int64_t k = 0; k < classes; ++k) {
      float sum = bias[k];
      for (int64_t c = 0; c < s.C; ++c) sum += W[k * s.C + c] * mean[c];
      logits[n * classes + k] = sum;
    }
  }
}

}  // namespace

// ---- kernel objects: made once, called many times ------------------------------------------------------------
//
// Passing ResNet-20's layers to an operator at every call (60 tensors and 200 numbers) cost more than its stem
// and classifier together at batch 1, and gathering them in Python as much again; a call of a torch class's
// method costs a few microseconds. So the body and the whole network are objects that hold what they were
// given: the modules' own tensors (values written into them in place are used) and copies derived from them
// (the packed filters, the stem's filters reordered), made again when their source's version changes, as
// Int8Adder2d.packed_filters does, or its storage or sizes (an assignment to .data changes those and not the
// version). Tensors replaced in the modules are the caller's to notice (the Python modules make a new object).
// The checks of every argument run at every call, on the tensors as they are then; a tensor's storage replaced
// (through .data) by another thread during a call is not guarded against.

namespace {

// A copy derived from a tensor, made again when the tensor's version or layout changes (its storage, held here
// so that its address cannot come back with other data, offset, sizes, strides, type). Tensors made under
// inference_mode have no version counter: values written into one in place are seen only where every call makes
// the copy afresh (unversioned_afresh: for small copies).
struct Derived {
  at::Tensor source;
  bool unversioned_afresh = false;
  at::Tensor copy;
  int64_t version = -1;
  c10::Storage storage;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
  at::ScalarType type = at::kByte;
  template <typename Make>
  const at::Tensor& get(const Make& make) {
    const bool unversioned = source.is_inference();
    const int64_t now = unversioned ? -1 : static_cast<int64_t>(source._version());
    const bool same = copy.defined() && now == version && source.storage().is_alias_of(storage) &&
                      source.storage_offset() == offset && source.sizes().equals(sizes) &&
                      source.strides().equals(strides) && source.scalar_type() == type;
    if (!same || (unversioned && unversioned_afresh)) {
      copy = make(source);
      version = now;
      storage = source.storage();
      offset = source.storage_offset();
      sizes = source.sizes().vec();
      strides = source.strides().vec();
      type = source.scalar_type();
    }
    return copy;
  }
};

}  // namespace

// The int8 adder layers of a network's body (see "a network's body in one call" above). Per layer l:
// qweight[l] (uint8 (O, C, kh, kw)), a[l], b[l] (float32, contiguous), inv_scale[l] (1 / its input's scale)
// and spec[kSpec * l ...] = kh, kw, stride, padding, zero_point, input channels, input map, residual map (-1:
// none), relu. Layer l writes map l + 1; map 0 is the input; a layer reads maps written before it.
class Layers {
 public:
  Layers(std::vector<at::Tensor> qweight, std::vector<at::Tensor> a, std::vector<at::Tensor> b,
         std::vector<int64_t> spec, std::vector<double> inv_scale)
      : a_(std::move(a)), b_(std::move(b)), spec_(std::move(spec)), inv_scale_(std::move(inv_scale)) {
    for (at::Tensor& w : qweight) filters_.push_back({std::move(w)});
  }

  // The layers for an input map of input_map's shape, checked; packed, the filters they read (held by the caller
  // for the call: another call may pack them again meanwhile).
  Body body(const char* op, const MapShape& input_map, std::vector<at::Tensor>& packed) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      packed.clear();
      for (Derived& w : filters_) packed.push_back(w.get([](const at::Tensor& qw) { return sad_pack(qw); }));
    }
    return make_body(op, input_map, packed, a_, b_, spec_, inv_scale_);
  }

  // x: float (N, C, H, W), best channels last; returns the last map (N, O, Ho, Wo), channels last
  at::Tensor forward(const at::Tensor& input) {
    TORCH_CHECK(input.dim() == 4 && input.size(0) > 0, "x must be (N, C, H, W) with at least one image");
    const at::Tensor x = input.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
    std::vector<at::Tensor> packed;
    const Body layers = body("Layers", {x.size(1), x.size(2), x.size(3)}, packed);
    const MapShape out = layers.maps.back();
    at::Tensor y = at::empty({x.size(0), out.C, out.H, out.W},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* xs = x.data_ptr<float>();
    float* ys = y.data_ptr<float>();
    for_images(x.size(0), [&](int64_t n0, int64_t count) { layers.run(xs, ys, n0, count); });
    return y;
  }

 private:
  std::vector<Derived> filters_;
  std::vector<at::Tensor> a_, b_;
  std::vector<int64_t> spec_;
  std::vector<double> inv_scale_;
  std::mutex mutex_;
};

// A ResNet in one call: the float stem (small_conv), the body's Layers (the stem's map their input), then the
// global mean of the last map and a linear classifier (head_weight (classes, channels) or a 1x1 convolution's,
// head_bias (classes), float32). Threads take whole images through all of it, as in Layers (fewer images
// than threads: the stem shares its rows and the body its positions among them; the head, a few thousand
// operations an image, runs on one).
class Network {
 public:
  Network(std::shared_ptr<Layers> layers, at::Tensor stem_weight, at::Tensor stem_bias, int64_t stem_stride,
          int64_t stem_padding, bool stem_relu, at::Tensor head_weight, at::Tensor head_bias)
      : layers_(std::move(layers)), stem_filters_{std::move(stem_weight), true}, stem_bias_(std::move(stem_bias)),
        head_weight_(std::move(head_weight)), head_bias_(std::move(head_bias)), stem_stride_(stem_stride),
        stem_padding_(stem_padding), stem_relu_(stem_relu) {
  }

  // x: float images (N, C, H, W); returns the logits (N, classes)
  at::Tensor forward(const at::Tensor& input) {
    at::Tensor stem_filters;  // (k, k, C, O): the stem's geometry is read from this copy, the one the loop uses
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stem_filters = stem_filters_.get(small_conv_filters);
    }
    TORCH_CHECK(input.dim() == 4, "Network: x must be (N, C, H, W)");
    const at::Tensor x = input.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
    const SmallConv stem = small_conv_args("Network", x, stem_filters, stem_bias_, stem_stride_, stem_padding_,
                                           stem_relu_);
    const int64_t N = x.size(0), C = stem.C, H = stem.H, W = stem.W;
    const MapShape stem_map{stem.O, stem.Ho, stem.Wo};
    std::vector<at::Tensor> packed;
    const Body body = layers_->body("Network", stem_map, packed);
    const MapShape last = body.maps.back();
    TORCH_CHECK(head_weight_.dim() >= 2 && head_weight_.numel() == head_weight_.size(0) * last.C &&
                head_bias_.numel() == head_weight_.size(0) && head_weight_.scalar_type() == at::kFloat &&
                head_bias_.scalar_type() == at::kFloat && head_weight_.is_contiguous() && head_bias_.is_contiguous(),
                "Network: the head's weight must be float32 (classes, ", last.C,
                ") (or a 1x1 convolution's, (classes, ", last.C, ", 1, 1)) and its bias (classes)");
    const int64_t classes = head_weight_.size(0);
    at::Tensor logits = at::empty({N, classes}, x.options());
    const float* xs = x.data_ptr<float>();
    const float *hw = head_weight_.data_ptr<float>(), *hb = head_bias_.data_ptr<float>();
    float* out = logits.data_ptr<float>();
    for_images(N, [&](int64_t n0, int64_t count) {
      BodyBuffers& buf = thread_buffers();
      if (buf.stem.size() < static_cast<size_t>(count * stem_map.values())) buf.stem.resize(count * stem_map.values());
      if (buf.last.size() < static_cast<size_t>(count * last.values())) buf.last.resize(count * last.values());
      SmallConv images = stem;
      images.x = xs + n0 * C * H * W;
      images.y = buf.stem.data();
      small_conv_images(images, count);
      body.run(buf.stem.data(), buf.last.data(), 0, count);
      global_mean_linear(buf.last.data(), count, last, hw, hb, classes, out + n0 * classes);
    });
    return logits;
  }

 private:
  std::shared_ptr<Layers> layers_;
  Derived stem_filters_;
  at::Tensor stem_bias_, head_weight_, head_bias_;
  int64_t stem_stride_, stem_padding_;
  bool stem_relu_;
  std::mutex mutex_;
};

#ifdef ADDERNET_X86
// The limits the kernel is judged against, measured rather than taken from tables (a VM's clock is unknown):
// the core's clock from a chain of dependent integer additions (one cycle each on every x86-64 core); the SAD
// instruction's issue rate from 12 independent chains of it on registers (enough to cover its latency); SAD
// with the addition the kernel makes after each one, in 8 sums like a block's (4 input words x 2 filter
// vectors; the filter vectors made opaque every round, so that no SAD can be hoisted out of the loop); and,
// on CPUs with VNNI, the int8 convolution's own instruction (vpdpbusd: 4 byte products added into each 32-bit
// lane, the accumulation included) in 12 chains.
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double clock_hz() {
  constexpr int64_t kIterations = 50'000'000;
  uint64_t x = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < kIterations; ++i)
    __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  return 4.0 * kIterations / seconds_since(start);
}

// The VNNI intrinsics and the CPU check for AVX-VNNI need GCC 11 (clang's __builtin_cpu_supports does not know
// "avxvnni" in the releases checked); other compilers build the kernel without the VNNI rate (reported as 0).
#if !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11
#define ADDERNET_VNNI 1
#endif

#define ADDERNET_12(step) step(0) step(1) step(2) step(3) step(4) step(5) step(6) step(7) step(8) step(9) step(10) \
  step(11)
#define ADDERNET_8(step) step(0) step(1) step(2) step(3) step(4) step(5) step(6) step(7)
#define ADDERNET_INIT(i) auto acc##i = ADDERNET_SET1(static_cast<char>(i));
#define ADDERNET_KEEP(i) __asm__ volatile("" : : "x"(acc##i));
// one round of each probe: SAD alone, SAD with its addition (input word i % 4, filter vector i / 4), vpdpbusd
#define ADDERNET_SAD(i) acc##i = ADDERNET_SAD_OP(acc##i, w[0]);
#define ADDERNET_SAD_ADD(i) acc##i = ADDERNET_ADD_OP(acc##i, ADDERNET_SAD_OP(x[i % 4], w[i / 4]));
#define ADDERNET_DOT(i) acc##i = ADDERNET_DOT_OP(acc##i, w[0], w[0]);
#define ADDERNET_SAME
#define ADDERNET_OPAQUE __asm__("" : "+x"(w[0]), "+x"(w[1]));
// `chains` independent chains of `step`, `count` instructions a round; `prepare` starts each round
#define ADDERNET_RATE(name, isa, chains, count, step, prepare)                                                \
  __attribute__((target(isa))) double name(int64_t iterations) {                                              \
    decltype(ADDERNET_SET1(0)) w[2] = {ADDERNET_SET1(5), ADDERNET_SET1(6)};                                    \
    const decltype(ADDERNET_SET1(0)) x[4] = {ADDERNET_SET1(1), ADDERNET_SET1(2), ADDERNET_SET1(3),             \
                                             ADDERNET_SET1(4)};                                                 \
    (void)x;                                                                                                  \
    chains(ADDERNET_INIT)                                                                                     \
    const auto start = std::chrono::steady_clock::now();                                                      \
    for (int64_t it = 0; it < iterations; ++it) {                                                             \
      prepare chains(step)                                                                                    \
    }                                                                                                         \
    const double seconds = seconds_since(start);                                                              \
    chains(ADDERNET_KEEP)                                                                                     \
    return double(count) * iterations / seconds;                                                              \
  }
#define ADDERNET_SET1 _mm256_set1_epi8
#define ADDERNET_SAD_OP _mm256_sad_epu8
#define ADDERNET_ADD_OP _mm256_add_epi32
ADDERNET_RATE(sad_rate_avx2, "avx2", ADDERNET_12, 12, ADDERNET_SAD, ADDERNET_SAME)
ADDERNET_RATE(sad_add_rate_avx2, "avx2", ADDERNET_8, 8, ADDERNET_SAD_ADD, ADDERNET_OPAQUE)
#ifdef ADDERNET_VNNI
#define ADDERNET_DOT_OP _mm256_dpbusd_avx_epi32
ADDERNET_RATE(dot_rate_avx_vnni, "avx2,avxvnni", ADDERNET_12, 12, ADDERNET_DOT, ADDERNET_SAME)
#undef ADDERNET_DOT_OP
#endif
#undef ADDERNET_SET1
#undef ADDERNET_SAD_OP
#undef ADDERNET_ADD_OP
#define ADDERNET_SET1 _mm512_set1_epi8
#define ADDERNET_SAD_OP _mm512_sad_epu8
#define ADDERNET_ADD_OP _mm512_add_epi64
ADDERNET_RATE(sad_rate_avx512, "avx512f,avx512bw", ADDERNET_12, 12, ADDERNET_SAD, ADDERNET_SAME)
ADDERNET_RATE(sad_add_rate_avx512, "avx512f,avx512bw", ADDERNET_8, 8, ADDERNET_SAD_ADD, ADDERNET_OPAQUE)
#ifdef ADDERNET_VNNI
#define ADDERNET_DOT_OP _mm512_dpbusd_epi32
ADDERNET_RATE(dot_rate_avx512_vnni, "avx512f,avx512bw,avx512vnni", ADDERNET_12, 12, ADDERNET_DOT, ADDERNET_SAME)
#undef ADDERNET_DOT_OP
#endif
#undef ADDERNET_SET1
#undef ADDERNET_SAD_OP
#undef ADDERNET_ADD_OP

// vpdpbusd's byte products per instruction at the width PyTorch's int8 libraries take on this CPU; 0 without
// VNNI
double dot_pairs() {
#ifdef ADDERNET_VNNI
  if (__builtin_cpu_supports("avx512vnni")) return 64.0;
  if (__builtin_cpu_supports("avxvnni")) return 32.0;
#endif
  return 0.0;
}

// vpdpbusd's rate at that width; 0 without VNNI
double dot_rate(int64_t iterations) {
#ifdef ADDERNET_VNNI
  if (__builtin_cpu_supports("avx512vnni")) return dot_rate_avx512_vnni(iterations);
  if (__builtin_cpu_supports("avxvnni")) return dot_rate_avx_vnni(iterations);
#endif
  (void)iterations;
  return 0.0;
}

// `rate(iterations)` on `threads` cores at once (an OpenMP team started together), each core's own rate summed:
// cores that share execution units (SMT siblings) show it as a lower sum
template <typename Rate>
double summed_rate(const char* op, int64_t threads, int64_t iterations, Rate rate) {
  std::vector<double> rates(threads, 0.0);
  int team = 0;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    if (t == 0) team = omp_get_num_threads();
#pragma omp barrier
    rates[t] = rate(iterations);
  }
  TORCH_CHECK(team == threads, op, ": OpenMP gave ", team, " threads, not ", threads);
  double total = 0.0;
  for (double r : rates) total += r;
  return total;
}
#endif

// Instructions per second on `threads` cores at once, summed, for the kernel's instruction set: [SAD, byte
// pairs per SAD, the clock in Hz, SAD each with its addition, vpdpbusd (0 without VNNI), byte pairs per
// vpdpbusd]; zeros on the portable path (no such instruction). Limits, each core's best: a core that starts
// late still counts its own rate.
std::vector<double> sad_limit(int64_t threads) {
#ifdef ADDERNET_X86
  constexpr int64_t kIterations = 20'000'000;
  const bool avx512 = std::strcmp(chosen_isa(), "avx512bw") == 0;
  TORCH_CHECK(threads >= 1, "sad_limit: threads must be >= 1");
  if (avx512 || std::strcmp(chosen_isa(), "avx2") == 0) {
    const double sad = summed_rate("sad_limit", threads, kIterations, avx512 ? sad_rate_avx512 : sad_rate_avx2);
    const double sad_add =
        summed_rate("sad_limit", threads, kIterations, avx512 ? sad_add_rate_avx512 : sad_add_rate_avx2);
    const double dot = summed_rate("sad_limit", threads, kIterations, dot_rate);
    return {sad, avx512 ? 64.0 : 32.0, clock_hz(), sad_add, dot, dot_pairs()};
  }
#endif
  (void)threads;
  return {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
}

// SAD instructions per second of `threads` cores together: each runs `rounds` rounds of 12 (sad_limit's SAD
// probe), timed from the team's start, once all its threads are running, to the end of its last thread: a core
// the host holds back from the VM for part of that time (another guest's, or one shared with another core as SMT
// siblings) shows as a lower rate, even where each core, while it ran, ran at full speed. Short (2 ms in the
// benchmark), so that it can take turns with the calls it is set beside; 0 on the portable path.
double sad_throughput(int64_t threads, int64_t rounds) {
  TORCH_CHECK(threads >= 1 && rounds >= 1, "sad_throughput: threads and rounds must be >= 1");
#ifdef ADDERNET_X86
  const bool avx512 = std::strcmp(chosen_isa(), "avx512bw") == 0;
  if (avx512 || std::strcmp(chosen_isa(), "avx2") == 0) {
    using Clock = std::chrono::steady_clock;
    std::vector<Clock::time_point> ends(threads);
    Clock::time_point start;
    int team = 0;
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      if (t == 0) team = omp_get_num_threads();
#pragma omp barrier
      if (t == 0) start = Clock::now();
      avx512 ? sad_rate_avx512(rounds) : sad_rate_avx2(rounds);
      ends[t] = Clock::now();
    }
    TORCH_CHECK(team == threads, "sad_throughput: OpenMP gave ", team, " threads, not ", threads);
    const double seconds = std::chrono::duration<double>(*std::max_element(ends.begin(), ends.end()) - start).count();
    return 12.0 * rounds * threads / seconds;
  }
#endif
  return 0.0;
}

// ---- what a kept kernel object was made from ------------------------------------------------------------------
//
// A Python module keeps its kernel object (Layers, Network) with the places of what the object was made from:
// (dictionary, key) pairs such as a module's _parameters and "weight", each holding an object then (a missing
// key: None), and dictionaries whose sizes must stay the same (a module's children, its hooks). At every call
// the module asks whether all still hold: in Python, ResNet-20's 80 or so places cost 6-8 us a call; here
// 1-1.7 us (AMD Zen 4). The objects are held here (so that an address cannot come back as another object),
// and shown to Python's cycle collector (tp_traverse, tp_clear): a hook whose closure holds the network, in a
// hook dictionary watched here, would otherwise keep the network alive for ever.
class Places {
 public:
  Places(const std::vector<std::pair<py::dict, py::object>>& places, const std::vector<py::dict>& sized) {
    for (const auto& [dict, key] : places) {
      places_.push_back({dict, key, py::reinterpret_borrow<py::object>(held(dict, key))});
    }
    for (const py::dict& dict : sized) sized_.push_back({dict, PyDict_Size(dict.ptr())});
  }

  // whether every place holds the object it held when this was made, and every sized dictionary its size
  // (false once the cycle collector has cleared this)
  bool unchanged() const {
    if (cleared_) return false;
    for (const Place& p : places_) {
      if (held(p.dict, p.key) != p.object.ptr()) return false;
    }
    for (const auto& [dict, size] : sized_) {
      if (PyDict_Size(dict.ptr()) != size) return false;
    }
    return true;
  }

  static int traverse(PyObject* self_base, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self_base));
    if (!py::detail::is_holder_constructed(self_base)) return 0;
    const Places& self = py::cast<const Places&>(py::handle(self_base));
    for (const Place& p : self.places_) {
      Py_VISIT(p.dict.ptr());
      Py_VISIT(p.key.ptr());
      Py_VISIT(p.object.ptr());
    }
    for (const auto& sized : self.sized_) Py_VISIT(sized.first.ptr());
    return 0;
  }

  static int clear(PyObject* self_base) {
    if (!py::detail::is_holder_constructed(self_base)) return 0;
    Places& self = py::cast<Places&>(py::handle(self_base));
    self.cleared_ = true;
    std::vector<Place>().swap(self.places_);
    std::vector<std::pair<py::dict, Py_ssize_t>>().swap(self.sized_);
    return 0;
  }

 private:
  struct Place {
    py::dict dict;
    py::object key, object;
  };
  static PyObject* held(const py::dict& dict, const py::object& key) {
    PyObject* value = PyDict_GetItemWithError(dict.ptr(), key.ptr());  // borrowed
    if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
    return value == nullptr ? Py_None : value;
  }
  std::vector<Place> places_;
  std::vector<std::pair<py::dict, Py_ssize_t>> sized_;
  bool cleared_ = false;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // module_local: another extension's class of the same C++ name cannot clash with these
  py::class_<Layers, std::shared_ptr<Layers>>(m, "Layers", py::module_local())
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<int64_t>,
                    std::vector<double>>())
      .def("forward", &Layers::forward, py::call_guard<py::gil_scoped_release>());
  py::class_<Network, std::shared_ptr<Network>>(m, "Network", py::module_local())
      .def(py::init<std::shared_ptr<Layers>, at::Tensor, at::Tensor, int64_t, int64_t, bool, at::Tensor,
                    at::Tensor>())
      .def("forward", &Network::forward, py::call_guard<py::gil_scoped_release>());
  py::class_<Places>(m, "Places", py::module_local(), py::custom_type_setup([](PyHeapTypeObject* heap_type) {
                       PyTypeObject* type = &heap_type->ht_type;
                       type->tp_flags |= Py_TPFLAGS_HAVE_GC;
                       type->tp_traverse = Places::traverse;
                       type->tp_clear = Places::clear;
                     }))
      .def(py::init<const std::vector<std::pair<py::dict, py::object>>&, const std::vector<py::dict>&>())
      .def("unchanged", &Places::unchanged);
}

TORCH_LIBRARY(addernet_int8, m) {
  m.def("sad_forward(Tensor x, float inv_scale, int zero_point, Tensor w, int kh, int kw, int stride, int padding, "
        "Tensor a, Tensor b, Tensor? residual, bool relu) -> Tensor");
  m.def("sad_sums(Tensor x, Tensor w, int filters, int kh, int kw, int stride, int repeats=1) -> Tensor");
  m.def("sad_isa() -> str", &sad_isa);
  m.def("sad_pack(Tensor qw) -> Tensor", &sad_pack);
  m.def("sad_limit(int threads) -> float[]", &sad_limit);
  m.def("sad_throughput(int threads, int rounds) -> float", &sad_throughput);
  m.def("small_conv(Tensor x, Tensor weight, Tensor bias, int stride, int padding, bool relu) -> Tensor");
  m.def("small_conv_is_fast(int filters) -> bool", &small_conv_is_fast);
}

TORCH_LIBRARY_IMPL(addernet_int8, CPU, m) {
  m.impl("sad_forward", sad_forward);
  m.impl("sad_sums", sad_sums);
  m.impl("small_conv", small_conv);
}
