// Helpers of the CPU op drivers: a typed parallel_for over the thread pool and one aligned scratch buffer type.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "tokenset/cpu_runtime.h"

namespace tokenset {
namespace cpu {

// fn(begin, end, worker) over [0, n) in chunks of `grain`, on at most `workers` workers: every worker id is in
// [0, workers), whatever set_num_threads does meanwhile. `workers` is required (no default that could disagree with
// the driver's sizing): it is the count the driver sized its per-worker scratch for, from the one num_threads() it
// read at entry (or fewer). Values < 1 run on worker 0 alone. Workers must not throw: drivers allocate every scratch
// buffer before calling this.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int workers, Fn&& fn) {
  using F = std::remove_reference_t<Fn>;
  static_assert(std::is_invocable_v<F&, int64_t, int64_t, int>,
                "parallel_for takes fn(begin, end, worker); a body without a worker index uses parallel_for_ranges");
  parallel_for_raw(n, grain, workers > 0 ? workers : 1,
                   [](void* ctx, int64_t begin, int64_t end, int worker) { (*static_cast<F*>(ctx))(begin, end, worker); },
                   const_cast<void*>(static_cast<const void*>(&fn)));
}

// fn(begin, end) over [0, n) in chunks of `grain`, on up to all the pool's threads: for bodies that use no per-worker
// state (they get no worker index, so nothing can be sized for a thread count that has changed since).
template <typename Fn>
void parallel_for_ranges(int64_t n, int64_t grain, Fn&& fn) {
  using F = std::remove_reference_t<Fn>;
  static_assert(std::is_invocable_v<F&, int64_t, int64_t>, "parallel_for_ranges takes fn(begin, end)");
  parallel_for_raw(n, grain, std::numeric_limits<int>::max(),
                   [](void* ctx, int64_t begin, int64_t end, int) { (*static_cast<F*>(ctx))(begin, end); },
                   const_cast<void*>(static_cast<const void*>(&fn)));
}

// How a driver spreads a batch of sets over `threads` workers: each worker takes whole sets (`slots` = min(threads,
// sets) sets in flight, one worker each), or, with fewer sets than threads, one set at a time split over every thread
// (one slot of `per_set` = threads workers). Per-set state is sized by slots, per-worker state by slots * per_set.
struct SetSplit {
  bool inside;
  int slots;
  int per_set;

  SetSplit(int64_t sets, int threads)
      : inside(sets < threads),
        slots(inside ? 1 : static_cast<int>(sets < threads ? sets : threads)),
        per_set(inside ? threads : 1) {}

  // run_set(set, slot) for every set in [0, sets).
  template <typename Fn>
  void each_set(int64_t sets, Fn&& run_set) const {
    if (inside) {
      for (int64_t set = 0; set < sets; ++set) run_set(set, 0);
    } else {
      parallel_for(sets, 1, slots, [&](int64_t b, int64_t e, int slot) {
        for (int64_t set = b; set < e; ++set) run_set(set, slot);
      });
    }
  }

  // fn(begin, end, worker) over [0, items) for one set: across its per_set workers (inside), else on the set's one
  // worker (worker 0).
  template <typename Fn>
  void within(int64_t items, int64_t grain, Fn&& fn) const {
    if (inside) {
      parallel_for(items, grain, per_set, fn);
    } else {
      fn(0, items, 0);
    }
  }
};

// Chunks of about n / (threads * per_thread) items: enough chunks to balance uneven items.
inline int64_t grain_for(int64_t n, int threads, int64_t per_thread = 32) {
  const int64_t g = n / (static_cast<int64_t>(threads) * per_thread);
  return g > 1 ? g : 1;
}

// Scratch of T starting on a cache line (a 64-byte vector access that straddles two lines costs two), zero-filled
// only where asked. Sized once by the driver; workers take slices.
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t count, bool zero = false) { resize(count, zero); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)), size_(other.size_) {}

  void resize(size_t count, bool zero = false) {
    std::free(data_);
    data_ = nullptr;
    size_ = count;
    const size_t bytes = ((count * sizeof(T) + 63) / 64) * 64 + 64;  // + one line: vector tails may overread
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
    if (zero) __builtin_memset(static_cast<void*>(data_), 0, bytes);
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cpu
}  // namespace tokenset
