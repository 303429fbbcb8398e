// The time loop of one canonical LSTM layer on the CPU, forward and backward, as XLA FFI handlers.
//
// Built on first use by lstm/native.py (g++ -O3 -march=native) and called from lstm/fast.py,
// which forms the weight and input gradients after the backward loop as single large matmuls in
// XLA. What this file adds over an XLA loop of kernels: every forward step is one fused pass
// (input and recurrent matmuls, gates, cell) on weights packed once per call, every backward
// step one pass for the gates' gradients and one matmul, split over the cores by hidden units,
// each pass waiting (spinning) for the one before, no thread returning to a pool in between.
// Projecting the inputs inside the loop spares the (T, B, 4H) buffer of projected inputs, and a
// library matmul right before the loop: XLA:CPU's matmul threads spin for a while after each
// call and took half the cores from the loop that followed.
//
// Layouts (row-major, float32): x (T, B, F); gates and dz (T, B, 4H) with the gates (i, f, g, o)
// in blocks of H columns; kernel (F, 4H), w (H, 4H); h and c (B, H); mask (T, B) as 0/1, or (0,)
// when there is none. Forward: the activations of x_t kernel + h_{t-1} w + b (kept for the
// backward unless gates is (0,)), and hs, cs (T, B, H), the carries after every step (frozen
// where the mask is 0). Backward: the gradients of the pre-activations dz and of the initial
// carries; lstm/fast.py forms the weight and input gradients from dz.
//
// bfloat16 (built where the compiler targets AVX512-BF16): the same loops on bfloat16 arrays,
// with the same layouts and the mask in float32. The weights are packed once per call in pairs of
// rows, as vdpbf16ps multiplies them, each product accumulating in float32; the gates, the cell
// and every elementwise step run in float32 and are rounded to bfloat16 where they are stored
// (gates, hs, cs, dz), as lstm/fast.py's XLA loops compute a bfloat16 layer. The backward's carry
// gradients stay float32 from step to step and are rounded once, into dh0 and dc0.

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One vector register's floats, and the batch rows of a forward register tile (4 rows x 4 gates
// of accumulators, plus the 4 gates' weights: 20 of AVX-512's 32 registers, 12 of AVX2's 16 with
// 2 rows). Other targets get the AVX2 shapes; lstm/native.py uses only AVX-512 and AVX2 builds.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRows = 4;
#define STACKED_LSTM_VECTOR_BYTES 64
#else
constexpr int kLanes = 8;
constexpr int kRows = 2;
#define STACKED_LSTM_VECTOR_BYTES 32
#endif
typedef float vf __attribute__((vector_size(STACKED_LSTM_VECTOR_BYTES)));
typedef float vfu __attribute__((vector_size(STACKED_LSTM_VECTOR_BYTES), aligned(4)));
typedef int32_t vi __attribute__((vector_size(STACKED_LSTM_VECTOR_BYTES)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf splat(float x) { return vf{} + x; }

// Keeps loaded vectors in registers: left alone, GCC folds the load into every FMA that uses it,
// which makes the micro-kernels bound by loads.
inline void in_registers(vf& v) {
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#elif defined(__AVX2__)
  asm("" : "+x"(v));
#endif
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }

// exp, as Cephes' expf: 2^n exp(r) with |r| <= ln(2)/2 and a degree-7 polynomial.
inline vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.3f)), splat(88.3f));
  vf fx = x * 1.44269504088896341f + 0.5f;
  vf fn = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
  fn = fn > fx ? fn - 1.0f : fn;  // floor
  x = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  vf z = x * x;
  vf y = splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  vi e = (__builtin_convertvector(fn, vi) + 127) << 23;
  return y * __builtin_bit_cast(vf, e);
}

inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

// tanh, as Cephes' tanhf: an odd polynomial below 0.625 in magnitude, 1 - 2 / (exp(2|x|) + 1) above.
inline vf vtanh(vf x) {
  vf ax = vmax(x, -x);
  vf s = x * x;
  vf p = splat(-5.70498872745e-3f);
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  vf small = p * s * x + x;
  vf big = 1.0f - 2.0f / (vexp(ax + ax) + 1.0f);
  big = x < 0.0f ? -big : big;
  return ax > 0.625f ? big : small;
}

// bfloat16 as XLA's BF16 buffers hold it: the upper 16 bits of a float.
typedef uint16_t bf16;

// Elements of n rows (4 gates x kLanes each) of a kernel once packed: floats row by row, bfloat16
// in pairs of rows as vdpbf16ps takes them (an odd n padded with a row of zeros).
template <typename E>
constexpr int64_t packed_rows(int64_t n) {
  return (std::is_same<E, bf16>::value ? (n + 1) / 2 * 2 : n) * 4 * kLanes;
}

#if defined(__AVX512BF16__)
// kLanes bfloat16 as floats, and kLanes floats rounded to bfloat16 (to nearest, ties to even).
inline vf load(const bf16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16);
}
inline void store(bf16* p, vf v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}

// kLanes pairs of bfloat16 (one pair per float lane).
inline __m512bh load_pairs(const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline void in_registers(__m512bh& v) { asm("" : "+v"(v)); }

// The pair (a[0], a[1]) in every lane; (a[0], 0) unless `whole` (the last of an odd count).
inline __m512bh broadcast_pair(const bf16* a, bool whole) {
  uint32_t v = a[0];
  if (whole) std::memcpy(&v, a, sizeof(v));
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
}
#endif

// n elements (a multiple of kLanes) of one type as another: bfloat16 widened or rounded.
template <typename From, typename To>
void convert(const From* in, To* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) store(out + i, load(in + i));
}

inline void cpu_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

int cores_allowed() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// The workers of one call. Worker 0 is the calling thread and starts at once; the helpers are
// tasks of XLA's intra-op thread pool (threads of their own would compete with the pool's, which
// spin for a while after each parallel op), or threads of their own where there is no pool. A
// helper joins whenever it starts, at the pass then under way (see Passes), until the calling
// thread has finished; one that starts later returns at once. So a helper that starts late (a
// pool thread busy with another call, or a core woken from idle) still takes its share of the
// passes left, and a busy pool never makes the call wait for it.
struct Team {
  static constexpr int kClosed = 1 << 30;
  std::atomic<int> state{0};  // helpers joined, | kClosed once the calling thread is done
  std::atomic<int> finished{0};
  std::function<void(int)> fn;
};

// Runs fn(worker) on the calling thread (worker 0) and on up to max_workers - 1 helpers.
template <typename Fn>
void run_workers(ffi::ThreadPool* pool, int max_workers, Fn fn) {
  auto team = std::make_shared<Team>();
  team->fn = [&fn](int p) { fn(p); };
  auto helper = [team] {
    int v = team->state.load(std::memory_order_acquire);
    while (!(v & Team::kClosed)) {
      if (team->state.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) {
        team->fn(v + 1);
        team->finished.fetch_add(1, std::memory_order_release);
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < max_workers; ++i) {
    if (pool != nullptr) {
      pool->Schedule([helper] { helper(); });
    } else {
      threads.emplace_back(helper);
    }
  }
  fn(0);
  const int joined = team->state.fetch_or(Team::kClosed, std::memory_order_acq_rel) &
                     (Team::kClosed - 1);
  while (team->finished.load(std::memory_order_acquire) < joined) sched_yield();
  for (auto& t : threads) t.join();
}

// Workers for a loop over `blocks` unit blocks: one per core this process may run on, no more
// than the pool can run beside the calling thread.
int workers_for(ffi::ThreadPool* pool, int blocks) {
  int64_t n = std::min<int64_t>(cores_allowed(), blocks);
  if (pool != nullptr) n = std::min<int64_t>(n, pool->num_threads() + 1);
  return static_cast<int>(std::max<int64_t>(n, 1));
}

// The passes of a loop, in order, each a set of work items that may run in parallel, and each
// needing every item of the pass before it done: pass 0 has `first` items, passes 1, 2, ...
// cycle through the item counts in `cycle`. A worker runs a pass's items it wins, then waits
// until the whole pass is done; no worker count is fixed: the pass under way is found from the
// count of items done, so a worker may join at any time (current()). Each worker prefers a
// contiguous range of each pass's items (its share of `workers`), then takes the others' items
// from their far end: a core slowed by other load, or a helper that has not started, makes the
// others do more instead of holding them up.
class Passes {
 public:
  Passes(int first, std::vector<int> cycle, int64_t count, int workers)
      : first_(first), cycle_(std::move(cycle)), count_(count), workers_(workers) {
    for (int n : cycle_) cycle_items_ += n;
    stamps_.emplace_back(first_);
    for (int n : cycle_) stamps_.emplace_back(n);
    for (auto& slot : stamps_)
      for (auto& stamp : slot) stamp.store(-1, std::memory_order_relaxed);
  }

  int64_t count() const { return count_; }

  // The first pass not yet done (count() once all are).
  int64_t current() const {
    int64_t done = done_.load(std::memory_order_acquire);
    if (done < first_) return 0;
    done -= first_;
    int64_t k = 1 + done / cycle_items_ * static_cast<int64_t>(cycle_.size());
    for (int64_t left = done % cycle_items_, j = 0; left >= cycle_[j]; ++j, ++k)
      left -= cycle_[j];
    return std::min(k, count_);
  }

  // Calls fn(item) for the items of pass k that worker p wins, then waits for the pass.
  template <typename Fn>
  void run(int p, int64_t k, Fn fn) {
    const int slot = k == 0 ? 0 : 1 + static_cast<int>((k - 1) % cycle_.size());
    auto& stamps = stamps_[slot];
    const int n = static_cast<int>(stamps.size());
    const int own = p % workers_;
    int64_t ran = 0;
    auto take = [&](int i) {
      int64_t v = stamps[i].load(std::memory_order_relaxed);
      while (v < k)
        if (stamps[i].compare_exchange_weak(v, k, std::memory_order_acq_rel)) {
          fn(i);
          ++ran;
          return;
        }
    };
    for (int i = lo(n, own); i < lo(n, own + 1); ++i) take(i);
    for (int d = 1; d < workers_; ++d) {
      const int q = (own + d) % workers_;
      for (int i = lo(n, q + 1) - 1; i >= lo(n, q); --i) take(i);
    }
    if (ran > 0) done_.fetch_add(ran, std::memory_order_acq_rel);
    const int64_t target = items_before(k + 1);
    for (int spins = 0; done_.load(std::memory_order_acquire) < target; ++spins) {
      if (spins > 2000) {
        sched_yield();
      } else {
        cpu_pause();
      }
    }
  }

 private:
  int lo(int n, int q) const { return static_cast<int>(static_cast<int64_t>(n) * q / workers_); }

  int64_t items_before(int64_t k) const {
    if (k == 0) return 0;
    const int64_t c = static_cast<int64_t>(cycle_.size());
    int64_t items = first_ + (k - 1) / c * cycle_items_;
    for (int64_t j = 0; j < (k - 1) % c; ++j) items += cycle_[j];
    return items;
  }

  const int first_;
  const std::vector<int> cycle_;
  const int64_t count_;
  const int workers_;
  int64_t cycle_items_ = 0;
  std::vector<std::vector<std::atomic<int64_t>>> stamps_;  // per slot and item: last pass claimed
  std::atomic<int64_t> done_{0};  // items done, over all passes
};

struct Shape {
  int64_t T, B, H, F;  // F: input features (forward only)
};

// ---------------------------------------------------------------------------------------------
// Forward

// acc[r] += a[r][0:n] times the packed rows wk (n, 4 gates x kLanes), for R rows.
template <int R>
inline void accumulate(vf (&acc)[R][4], const float* const (&a)[R], int64_t n, const float* wk) {
  for (int64_t k = 0; k < n; ++k, wk += 4 * kLanes) {
    vf w0 = load(wk), w1 = load(wk + kLanes), w2 = load(wk + 2 * kLanes),
       w3 = load(wk + 3 * kLanes);
    in_registers(w0), in_registers(w1), in_registers(w2), in_registers(w3);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      vf x = splat(a[r][k]);
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
      acc[r][2] += x * w2;
      acc[r][3] += x * w3;
    }
  }
}

#if defined(__AVX512BF16__)
// acc[r] += a[r][0:n] times the packed row pairs wk (n / 2 rounded up, 4 gates x kLanes pairs).
template <int R>
inline void accumulate(vf (&acc)[R][4], const bf16* const (&a)[R], int64_t n, const bf16* wk) {
  for (int64_t k = 0; k < n; k += 2, wk += 8 * kLanes) {
    __m512bh w0 = load_pairs(wk), w1 = load_pairs(wk + 2 * kLanes),
             w2 = load_pairs(wk + 4 * kLanes), w3 = load_pairs(wk + 6 * kLanes);
    in_registers(w0), in_registers(w1), in_registers(w2), in_registers(w3);
    const bool whole = k + 1 < n;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh x = broadcast_pair(a[r] + k, whole);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], x, w2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], x, w3);
    }
  }
}
#endif

// Packs unit block u of the input kernel (F, 4H) and the recurrent one (H, 4H) into wp: rows of the
// input kernel, then of the recurrent one, each (4, kLanes): gate g's columns g H + u kLanes ...
void pack_block(float* wp, const float* kernel, const float* wd, int64_t F, int64_t H, int u) {
  for (int64_t r = 0; r < F + H; ++r) {
    const float* row = r < F ? kernel + r * 4 * H : wd + (r - F) * 4 * H;
    for (int g = 0; g < 4; ++g)
      std::memcpy(wp + (r * 4 + g) * kLanes, row + g * H + u * kLanes, kLanes * sizeof(float));
  }
}

// The same in pairs of rows: per pair and gate, lane j's two elements side by side; each kernel
// starts a pair of its own, an odd row count ending in a pair with zero.
void pack_block(bf16* wp, const bf16* kernel, const bf16* wd, int64_t F, int64_t H, int u) {
  for (int part = 0; part < 2; ++part) {
    const bf16* m = part == 0 ? kernel : wd;
    const int64_t n = part == 0 ? F : H;
    for (int64_t r = 0; r < n; r += 2)
      for (int g = 0; g < 4; ++g)
        for (int j = 0; j < kLanes; ++j, wp += 2) {
          const int64_t col = g * H + u * kLanes + j;
          wp[0] = m[r * 4 * H + col];
          wp[1] = r + 1 < n ? m[(r + 1) * 4 * H + col] : bf16{0};
        }
  }
}

// Gates of `rows` batch rows (from row0) for unit block u at step t, fused with the cell: the
// packed block wp holds the input kernel's F rows, then the recurrent kernel's H, each
// (4 gates x kLanes). x: (T, B, F); h_prev: (B, H). gates: where the activations are kept for
// the backward, or null.
template <int R, typename E>
void forward_tile(const Shape& s, int64_t t, int64_t row0, int u, const E* wp, const E* x,
                  const E* h_prev, const E* b, const float* mask, E* gates, E* hs, E* cs,
                  const E* c_prev_all) {
  const int64_t H = s.H, B = s.B, F = s.F;
  vf acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 4; ++g) acc[r][g] = vf{};
  const E* a[R];
  for (int r = 0; r < R; ++r) a[r] = x + (t * B + row0 + r) * F;
  accumulate<R>(acc, a, F, wp);
  for (int r = 0; r < R; ++r) a[r] = h_prev + (row0 + r) * H;
  accumulate<R>(acc, a, H, wp + packed_rows<E>(F));
  const int64_t col = static_cast<int64_t>(u) * kLanes;
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r;
    const int64_t at = (t * B + row) * 4 * H + col;
    vf pre[4];
    for (int g = 0; g < 4; ++g) pre[g] = acc[r][g] + load(b + g * H + col);
    vf i = vsigmoid(pre[0]), f = vsigmoid(pre[1]), gg = vtanh(pre[2]), o = vsigmoid(pre[3]);
    if (gates != nullptr) {
      store(gates + at, i);
      store(gates + at + H, f);
      store(gates + at + 2 * H, gg);
      store(gates + at + 3 * H, o);
    }
    vf c_prev = load(c_prev_all + row * H + col);
    vf c = f * c_prev + i * gg;
    vf h = o * vtanh(c);
    if (mask != nullptr && mask[t * B + row] == 0.0f) {
      c = c_prev;
      h = load(h_prev + row * H + col);
    }
    store(cs + (t * B + row) * H + col, c);
    store(hs + (t * B + row) * H + col, h);
  }
}

// The forward loop over x (T, B, F); gates ((T, B, 4H), or null) receives the activations.
template <typename E>
void forward_loop(ffi::ThreadPool* pool, const Shape& s, const E* x, const E* kernel, const E* wd,
                  const E* b, const E* h0, const E* c0, const float* mask, E* gates, E* hs,
                  E* cs) {
  const int64_t T = s.T, B = s.B, H = s.H, F = s.F;
  const int blocks = static_cast<int>(H / kLanes);
  const int workers = workers_for(pool, blocks);
  const int64_t block_size = packed_rows<E>(F) + packed_rows<E>(H);
  std::vector<E> packed(static_cast<size_t>(blocks * block_size));
  // Pass 0 packs the weights, pass t + 1 runs step t; both over the unit blocks.
  Passes passes(blocks, {blocks}, T + 1, workers);
  run_workers(pool, workers, [&](int p) {
    for (int64_t k = passes.current(); k < passes.count(); ++k) {
      if (k == 0) {
        passes.run(p, k, [&](int u) {
          pack_block(packed.data() + u * block_size, kernel, wd, F, H, u);
        });
        continue;
      }
      const int64_t t = k - 1;
      const E* h_prev = t == 0 ? h0 : hs + (t - 1) * B * H;
      const E* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
      passes.run(p, k, [&](int u) {
        const E* wp = packed.data() + u * block_size;
        int64_t row = 0;
        for (; row + kRows <= B; row += kRows)
          forward_tile<kRows>(s, t, row, u, wp, x, h_prev, b, mask, gates, hs, cs, c_prev);
        for (; row < B; ++row)
          forward_tile<1>(s, t, row, u, wp, x, h_prev, b, mask, gates, hs, cs, c_prev);
      });
    }
  });
}

// The forward call on D (F32 or BF16) arrays; the mask is float32 either way.
template <ffi::DataType D>
ffi::Error Forward(ffi::Buffer<D> x, ffi::Buffer<D> kernel, ffi::Buffer<D> w, ffi::Buffer<D> b,
                   ffi::Buffer<D> h0, ffi::Buffer<D> c0, ffi::Buffer<ffi::F32> mask,
                   ffi::ResultBuffer<D> gates, ffi::ResultBuffer<D> hs, ffi::ResultBuffer<D> cs,
                   ffi::ThreadPool pool) {
  auto dims = x.dimensions();
  auto w_dims = w.dimensions();
  if (dims.size() != 3 || w_dims.size() != 2 || w_dims[0] % kLanes != 0 ||
      w_dims[1] != 4 * w_dims[0])
    return ffi::Error::InvalidArgument(
        "lstm forward: x must be (T, B, F) and w (H, 4H) with H a multiple of 16");
  const Shape s{dims[0], dims[1], w_dims[0], dims[2]};
  if (kernel.element_count() != static_cast<size_t>(s.F * 4 * s.H))
    return ffi::Error::InvalidArgument("lstm forward: the kernel must be (F, 4H)");
  if (gates->element_count() != 0 && gates->element_count() != static_cast<size_t>(s.T * s.B * 4 * s.H))
    return ffi::Error::InvalidArgument("lstm forward: gates must be (T, B, 4H), or empty");
  forward_loop(&pool, s, x.typed_data(), kernel.typed_data(), w.typed_data(), b.typed_data(),
               h0.typed_data(), c0.typed_data(),
               mask.element_count() == 0 ? nullptr : mask.typed_data(),
               gates->element_count() == 0 ? nullptr : gates->typed_data(), hs->typed_data(),
               cs->typed_data());
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Backward

// dz of step t for the rows and unit block u (from the gates, which dz may be), and the new dc
// carry; dh holds dh_{t+1}; where the mask is 0 the carries' gradients pass through.
// (dh, dc and pass_h are float32 whatever E is.)
template <typename E>
void backward_cell(const Shape& s, int64_t t, int u, const E* gates, const E* cs, const E* c0,
                   const E* dy, const float* mask, E* dz, float* dh, float* dc, float* pass_h) {
  const int64_t B = s.B, H = s.H, col = static_cast<int64_t>(u) * kLanes;
  for (int64_t row = 0; row < B; ++row) {
    const E* a = gates + (t * B + row) * 4 * H;
    E* at = dz + (t * B + row) * 4 * H;
    vf dh_next = load(dh + row * H + col);
    vf dc_next = load(dc + row * H + col);
    if (mask != nullptr && mask[t * B + row] == 0.0f) {
      for (int g = 0; g < 4; ++g) store(at + g * H + col, vf{});
      store(pass_h + row * H + col, dh_next);
      continue;  // dc carry unchanged
    }
    store(pass_h + row * H + col, vf{});
    vf i = load(a + col), f = load(a + H + col), g = load(a + 2 * H + col),
       o = load(a + 3 * H + col);
    vf c = load(cs + (t * B + row) * H + col);
    vf c_prev = load((t == 0 ? c0 : cs + (t - 1) * B * H) + row * H + col);
    vf dhv = load(dy + (t * B + row) * H + col) + dh_next;
    vf tc = vtanh(c);
    vf dcv = dc_next + dhv * o * (1.0f - tc * tc);
    store(at + col, dcv * g * i * (1.0f - i));
    store(at + H + col, dcv * c_prev * f * (1.0f - f));
    store(at + 2 * H + col, dcv * i * (1.0f - g * g));
    store(at + 3 * H + col, dhv * tc * o * (1.0f - o));
    store(dc + row * H + col, dcv * f);
  }
}

// acc[r] += a[r][0:K] times the packed w^T of N unit blocks, (K, N kLanes).
template <int R, int N>
inline void product(vf (&acc)[R][N], const float* const (&a)[R], int64_t K, const float* wtp) {
  for (int64_t k = 0; k < K; ++k) {
    static_assert(N == 1 || N == 2, "one or two unit blocks");
    vf w0 = load(wtp + k * N * kLanes), w1 = N == 2 ? load(wtp + (k * N + 1) * kLanes) : vf{};
    in_registers(w0), in_registers(w1);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      vf x = splat(a[r][k]);
      acc[r][0] += x * w0;
      if (N == 2) acc[r][N - 1] += x * w1;
    }
  }
}

#if defined(__AVX512BF16__)
// The same with w^T packed in pairs of rows (K / 2, N kLanes pairs); K is even (4H).
template <int R, int N>
inline void product(vf (&acc)[R][N], const bf16* const (&a)[R], int64_t K, const bf16* wtp) {
  for (int64_t k = 0; k < K; k += 2) {
    static_assert(N == 1 || N == 2, "one or two unit blocks");
    __m512bh w0 = load_pairs(wtp + k * N * kLanes),
             w1 = N == 2 ? load_pairs(wtp + (k * N + 2) * kLanes) : __m512bh{};
    in_registers(w0), in_registers(w1);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh x = broadcast_pair(a[r] + k, true);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
      if (N == 2) acc[r][N - 1] = _mm512_dpbf16_ps(acc[r][N - 1], x, w1);
    }
  }
}
#endif

// Packs w^T (4H, H) of the `lanes` units from unit0 into wtp (K = 4H rows of `lanes`).
void pack_transposed(float* wtp, const float* wd, int64_t unit0, int lanes, int64_t K) {
  for (int j = 0; j < lanes; ++j) {
    const float* row = wd + (unit0 + j) * K;
    for (int64_t r = 0; r < K; ++r) wtp[r * lanes + j] = row[r];
  }
}

// The same in pairs of rows: unit j's (w[j][r], w[j][r + 1]) side by side, r even.
void pack_transposed(bf16* wtp, const bf16* wd, int64_t unit0, int lanes, int64_t K) {
  for (int j = 0; j < lanes; ++j) {
    const bf16* row = wd + (unit0 + j) * K;
    for (int64_t r = 0; r < K; r += 2) {
      wtp[r * lanes + 2 * j] = row[r];
      wtp[r * lanes + 2 * j + 1] = row[r + 1];
    }
  }
}

// dh_{t-1} for `rows` rows and N unit blocks from ub: dz[t] (B, 4H) times the packed w^T of
// those blocks, (4H, N kLanes), plus what passed through masked steps.
template <int R, int N, typename E>
void backward_tile(const Shape& s, int64_t t, int64_t row0, int ub, const E* wtp, const E* dz,
                   const float* pass_h, float* dh) {
  const int64_t H = s.H, B = s.B, K = 4 * s.H;
  vf acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < N; ++n) acc[r][n] = vf{};
  const E* a[R];
  for (int r = 0; r < R; ++r) a[r] = dz + (t * B + row0 + r) * K;
  product<R, N>(acc, a, K, wtp);
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < N; ++n) {
      const int64_t at = (row0 + r) * H + static_cast<int64_t>(ub + n) * kLanes;
      store(dh + at, acc[r][n] + load(pass_h + at));
    }
}

constexpr int kGroup = 2;  // unit blocks per backward work item

// dh_{t-1} of the N (<= kGroup) unit blocks from ub, for all rows.
template <int N, typename E>
void backward_group(const Shape& s, int64_t t, int ub, const E* wtp, const E* dz,
                    const float* pass_h, float* dh) {
  int64_t row = 0;
  for (; row + 2 * kRows <= s.B; row += 2 * kRows)
    backward_tile<2 * kRows, N>(s, t, row, ub, wtp, dz, pass_h, dh);
  for (; row + kRows <= s.B; row += kRows)
    backward_tile<kRows, N>(s, t, row, ub, wtp, dz, pass_h, dh);
  for (; row < s.B; ++row) backward_tile<1, N>(s, t, row, ub, wtp, dz, pass_h, dh);
}

// The backward loop from the saved gates to dz (T, B, 4H); dh and dc hold the last carries'
// gradients on entry and the initial ones on return.
template <typename E>
void backward_loop(ffi::ThreadPool* pool, const Shape& s, const E* gates, const E* wd, const E* cs,
                   const E* c0, const E* dy, const float* mask, E* dz, float* dh, float* dc) {
  const int64_t T = s.T, B = s.B, H = s.H, K = 4 * H;
  const int blocks = static_cast<int>(H / kLanes);
  const int groups = (blocks + kGroup - 1) / kGroup;
  const int workers = workers_for(pool, blocks);
  std::vector<float> pass_h(static_cast<size_t>(B * H));
  std::vector<E> packed(static_cast<size_t>(H * K));
  auto group_blocks = [&](int gi) { return std::min(kGroup, blocks - gi * kGroup); };
  // Pass 0 packs w^T by groups; then per step t, from the last: the cells' pass over the unit
  // blocks (dz[t], which every unit's dh_{t-1} needs whole), and the products' pass over the
  // groups (dh_{t-1}, which every unit's next cell needs whole).
  Passes passes(groups, {blocks, groups}, 2 * T + 1, workers);
  run_workers(pool, workers, [&](int p) {
    for (int64_t k = passes.current(); k < passes.count(); ++k) {
      if (k == 0) {
        passes.run(p, k, [&](int gi) {  // w^T of the group: (K, n kLanes)
          const int64_t unit0 = static_cast<int64_t>(gi) * kGroup * kLanes;
          pack_transposed(packed.data() + unit0 * K, wd, unit0, group_blocks(gi) * kLanes, K);
        });
        continue;
      }
      const int64_t t = T - 1 - (k - 1) / 2;
      if (k % 2 == 1) {
        passes.run(p, k, [&](int u) {
          backward_cell(s, t, u, gates, cs, c0, dy, mask, dz, dh, dc, pass_h.data());
        });
      } else {
        passes.run(p, k, [&](int gi) {
          const int ub = gi * kGroup;
          const E* wtp = packed.data() + static_cast<int64_t>(ub) * kLanes * K;
          if (group_blocks(gi) == 2)
            backward_group<2>(s, t, ub, wtp, dz, pass_h.data(), dh);
          else
            backward_group<1>(s, t, ub, wtp, dz, pass_h.data(), dh);
        });
      }
    }
  });
}

// The backward call on D (F32 or BF16) arrays; the mask is float32 either way.
template <ffi::DataType D>
ffi::Error Backward(ffi::Buffer<D> gates, ffi::Buffer<D> cs, ffi::Buffer<D> c0, ffi::Buffer<D> w,
                    ffi::Buffer<D> dy, ffi::Buffer<D> dh_last, ffi::Buffer<D> dc_last,
                    ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<D> dz, ffi::ResultBuffer<D> dh0,
                    ffi::ResultBuffer<D> dc0, ffi::ThreadPool pool) {
  auto dims = gates.dimensions();
  if (dims.size() != 3 || dims[2] % (4 * kLanes) != 0)
    return ffi::Error::InvalidArgument("lstm backward: gates must be (T, B, 4H), H a multiple of 16");
  const Shape s{dims[0], dims[1], dims[2] / 4, 0};
  const float* m = mask.element_count() == 0 ? nullptr : mask.typed_data();
  if constexpr (D == ffi::F32) {
    std::memcpy(dh0->typed_data(), dh_last.typed_data(), dh_last.size_bytes());
    std::memcpy(dc0->typed_data(), dc_last.typed_data(), dc_last.size_bytes());
    backward_loop(&pool, s, gates.typed_data(), w.typed_data(), cs.typed_data(), c0.typed_data(),
                  dy.typed_data(), m, dz->typed_data(), dh0->typed_data(), dc0->typed_data());
  } else {
    const int64_t n = s.B * s.H;
    std::vector<float> dh(static_cast<size_t>(n)), dc(static_cast<size_t>(n));
    convert(dh_last.typed_data(), dh.data(), n);
    convert(dc_last.typed_data(), dc.data(), n);
    backward_loop(&pool, s, gates.typed_data(), w.typed_data(), cs.typed_data(), c0.typed_data(),
                  dy.typed_data(), m, dz->typed_data(), dh.data(), dc.data());
    convert(dh.data(), dh0->typed_data(), n);
    convert(dc.data(), dc0->typed_data(), n);
  }
  return ffi::Error::Success();
}

// The argument and result types of the calls on D (F32 or BF16) arrays.
template <ffi::DataType D>
auto forward_binding() {
  return ffi::Ffi::Bind()
      .template Arg<ffi::Buffer<D>>()         // x (T, B, F)
      .template Arg<ffi::Buffer<D>>()         // kernel (F, 4H)
      .template Arg<ffi::Buffer<D>>()         // w (H, 4H)
      .template Arg<ffi::Buffer<D>>()         // b (4H)
      .template Arg<ffi::Buffer<D>>()         // h0 (B, H)
      .template Arg<ffi::Buffer<D>>()         // c0 (B, H)
      .template Arg<ffi::Buffer<ffi::F32>>()  // mask (T, B) or (0,)
      .template Ret<ffi::Buffer<D>>()         // gates (T, B, 4H)
      .template Ret<ffi::Buffer<D>>()         // hs (T, B, H)
      .template Ret<ffi::Buffer<D>>()         // cs (T, B, H)
      .template Ctx<ffi::ThreadPool>();
}

template <ffi::DataType D>
auto backward_binding() {
  return ffi::Ffi::Bind()
      .template Arg<ffi::Buffer<D>>()         // gates (T, B, 4H)
      .template Arg<ffi::Buffer<D>>()         // cs (T, B, H)
      .template Arg<ffi::Buffer<D>>()         // c0 (B, H)
      .template Arg<ffi::Buffer<D>>()         // w (H, 4H)
      .template Arg<ffi::Buffer<D>>()         // dy (T, B, H)
      .template Arg<ffi::Buffer<D>>()         // dh_last (B, H)
      .template Arg<ffi::Buffer<D>>()         // dc_last (B, H)
      .template Arg<ffi::Buffer<ffi::F32>>()  // mask (T, B) or (0,)
      .template Ret<ffi::Buffer<D>>()         // dz (T, B, 4H)
      .template Ret<ffi::Buffer<D>>()         // dh0 (B, H)
      .template Ret<ffi::Buffer<D>>()         // dc0 (B, H)
      .template Ctx<ffi::ThreadPool>();
}

}  // namespace

// The vector width this build targets in bits: 512 (AVX-512), 256 (AVX2 with FMA), else 0.
// lstm/native.py uses the kernel only at 512 or 256.
extern "C" int StackedLstmVectorBits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__) && defined(__FMA__)
  return 256;
#else
  return 0;
#endif
}

// 1 where this build has the bfloat16 calls (StackedLstmForwardBf16, StackedLstmBackwardBf16):
// built for a CPU with AVX512-BF16.
extern "C" int StackedLstmBf16() {
#if defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackedLstmForward, Forward<ffi::F32>, forward_binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(StackedLstmBackward, Backward<ffi::F32>,
                              backward_binding<ffi::F32>());

#if defined(__AVX512BF16__)
XLA_FFI_DEFINE_HANDLER_SYMBOL(StackedLstmForwardBf16, Forward<ffi::BF16>,
                              forward_binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(StackedLstmBackwardBf16, Backward<ffi::BF16>,
                              backward_binding<ffi::BF16>());
#endif
