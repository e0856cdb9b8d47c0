// SIMD level selection and the persistent thread pool used by every CPU op.
#include "tokenset/cpu_runtime.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tokenset/common.h"

namespace tokenset {
namespace cpu {

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::AVX2: return "avx2";
    case SimdLevel::AVXVNNI: return "avxvnni";
    case SimdLevel::AVX512: return "avx512";
    case SimdLevel::AVX512VNNI: return "avx512vnni";
    case SimdLevel::AVX512BF16: return "avx512bf16";
    case SimdLevel::AMX: return "amx";
  }
  return "unknown";
}

const char* compiled_simd_levels() { return TOKENSET_SIMD_LEVELS; }

static bool level_compiled(SimdLevel level) {
  const std::string levels = std::string(",") + TOKENSET_SIMD_LEVELS + ",";
  return levels.find(std::string(",") + simd_level_name(level) + ",") != std::string::npos;
}

#if defined(TOKENSET_HAS_AMX)
// Linux hands out the 8 KiB AMX tile state only to processes that ask (arch_prctl, kernel 5.16+); without it the first
// tile instruction faults.
static bool os_grants_amx_tiles() {
  static const bool granted = [] {
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}
#endif

bool cpu_has_avx_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avxvnni") != 0;
  }();
  return has;
#else
  return false;
#endif
}

static bool cpu_supports(SimdLevel level) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  switch (level) {
    case SimdLevel::Scalar: return true;
    // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
    case SimdLevel::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::AVXVNNI:
      // AVX-VNNI (Alder Lake, Sapphire Rapids, Zen 5 and later), or AVX-512 VNNI with AVX-512 VL, whose EVEX encoding
      // of vpdpbusd on ymm registers computes the same (Ice Lake, Zen 4): the level's kernels are built both ways.
      return cpu_supports(SimdLevel::AVX2) &&
             (__builtin_cpu_supports("avxvnni") ||
              (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")));
    case SimdLevel::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::AVX512VNNI:
      return cpu_supports(SimdLevel::AVX512) && __builtin_cpu_supports("avx512vnni");
    case SimdLevel::AVX512BF16:
      return cpu_supports(SimdLevel::AVX512VNNI) && __builtin_cpu_supports("avx512bf16");
    case SimdLevel::AMX:
#if defined(TOKENSET_HAS_AMX)
      // Every AMX CPU has VNNI and AVX-512 BF16; requiring them keeps the AVX-512 levels nested (each includes the
      // ones below it from avx512 up).
      return cpu_supports(SimdLevel::AVX512BF16) && __builtin_cpu_supports("amx-tile") &&
             __builtin_cpu_supports("amx-bf16") && os_grants_amx_tiles();
#else
      return false;
#endif
  }
  return false;
#else
  return level == SimdLevel::Scalar;
#endif
}

bool simd_level_available(SimdLevel level) { return level_compiled(level) && cpu_supports(level); }

// Every level, in order (the enum's values).
static constexpr SimdLevel kAllLevels[] = {SimdLevel::Scalar,     SimdLevel::AVX2,       SimdLevel::AVXVNNI,
                                           SimdLevel::AVX512,     SimdLevel::AVX512VNNI, SimdLevel::AVX512BF16,
                                           SimdLevel::AMX};

bool simd_level_from_name(const char* name, SimdLevel* level) {
  for (SimdLevel l : kAllLevels)
    if (std::strcmp(name, simd_level_name(l)) == 0) {
      *level = l;
      return true;
    }
  return false;
}

// The best level compiled and supported at or below `cap` (a CPU may have AVX-512 but no VNNI).
static SimdLevel best_simd_level_up_to(SimdLevel cap) {
  SimdLevel best = SimdLevel::Scalar;
  for (SimdLevel l : kAllLevels)
    if (static_cast<int>(l) <= static_cast<int>(cap) && simd_level_available(l)) best = l;
  return best;
}

SimdLevel best_simd_level() { return best_simd_level_up_to(SimdLevel::AMX); }

static SimdLevel initial_simd_level() {
  // TOKENSET_SIMD=scalar|avx2|avxvnni|avx512|avx512vnni|avx512bf16|amx caps the level (for testing and comparing
  // paths); an unknown name is ignored (the Python package warns).
  SimdLevel cap = SimdLevel::AMX;
  if (const char* env = std::getenv("TOKENSET_SIMD")) simd_level_from_name(env, &cap);
  return best_simd_level_up_to(cap);
}

static std::atomic<int> g_simd_level{static_cast<int>(initial_simd_level())};

SimdLevel active_simd_level() { return static_cast<SimdLevel>(g_simd_level.load(std::memory_order_relaxed)); }

void set_simd_level(SimdLevel level) {
  if (!level_compiled(level))
    throw ValueError(std::string("SIMD level '") + simd_level_name(level) + "' is not compiled into this build (built: " +
                     TOKENSET_SIMD_LEVELS + ")");
  if (!cpu_supports(level))
    throw ValueError(std::string("this CPU does not support SIMD level '") + simd_level_name(level) + "'");
  g_simd_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------------------------------
// Thread pool
// ---------------------------------------------------------------------------------------------------------------------

static int default_threads() {
  if (const char* env = std::getenv("TOKENSET_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

namespace {

struct Job {
  RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  int64_t grain = 1;
  int workers = 1;  // ids handed out are < workers
  std::atomic<int64_t> next{0};
};

void run_chunks(Job& job, int worker) {
  for (;;) {
    const int64_t begin = job.next.fetch_add(job.grain, std::memory_order_relaxed);
    if (begin >= job.n) return;
    job.fn(job.ctx, begin, std::min(job.n, begin + job.grain), worker);
  }
}

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads) {}
  ~ThreadPool() { stop_workers(); }

  int threads() const { return threads_.load(); }

  void set_threads(int threads) {
    if (threads < 1) throw ValueError("number of threads must be >= 1, got " + std::to_string(threads));
    std::lock_guard<std::mutex> run(run_mutex_);  // waits for a running job
    stop_workers();
    threads_.store(threads);
  }

  // Worker ids handed out are < max_workers (and < the thread count), always: the count is read under run_mutex_,
  // which set_threads takes too, so it cannot change between sizing the job and handing out ids; a call that finds
  // the pool busy (another caller's job, or set_threads) runs inline as worker 0.
  void parallel_for(int64_t n, int64_t grain, int max_workers, RangeFn fn, void* ctx) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    max_workers = std::max(max_workers, 1);  // worker 0 always runs: callers size scratch for at least one worker
    const int64_t chunks = (n + grain - 1) / grain;
    std::unique_lock<std::mutex> run(run_mutex_, std::try_to_lock);
    const int workers =
        run.owns_lock() ? static_cast<int>(std::min<int64_t>({threads_.load(), max_workers, chunks})) : 1;
    if (workers <= 1) {  // small job, or the pool is busy with another caller's job
      if (run.owns_lock()) run.unlock();  // the pool stays free for other callers
      fn(ctx, 0, n, 0);
      return;
    }
    ensure_workers(workers - 1);
    Job job;
    job.fn = fn;
    job.ctx = ctx;
    job.n = n;
    job.grain = grain;
    job.workers = workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      helpers_wanted_ = workers - 1;
      helpers_running_ = 0;
      next_worker_id_ = 1;
      ++generation_;
    }
    wake_.notify_all();
    run_chunks(job, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    helpers_wanted_ = 0;  // helpers that have not started yet stay asleep
    done_.wait(lock, [&] { return helpers_running_ == 0; });
    job_ = nullptr;
  }

 private:
  void ensure_workers(int count) {
    if (static_cast<int>(workers_.size()) >= count) return;
    stopping_ = false;
    // A worker starts from the generation current now, so it cannot miss the job about to be published.
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation = generation_;
    }
    while (static_cast<int>(workers_.size()) < count)
      workers_.emplace_back([this, generation] { worker_loop(generation); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_)
      if (t.joinable()) t.join();
    workers_.clear();
    stopping_ = false;
  }

  void worker_loop(uint64_t seen) {
    for (;;) {
      Job* job = nullptr;
      int id = 0;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && helpers_wanted_ > 0); });
        if (stopping_) return;
        seen = generation_;
        --helpers_wanted_;
        ++helpers_running_;
        id = next_worker_id_++;
        job = job_;
      }
      if (id < job->workers) run_chunks(*job, id);  // always true (helpers_wanted_ = workers - 1): a cheap guard
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --helpers_running_;
      }
      done_.notify_all();
    }
  }

  std::atomic<int> threads_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int helpers_wanted_ = 0;
  int helpers_running_ = 0;
  int next_worker_id_ = 1;
  bool stopping_ = false;
};

// The process's pool. Never destroyed: worker threads must not be joined during static destruction at interpreter
// exit.
//
// fork(): the child has only the forking thread, while the parent's pool may have had a job in flight; its mutexes,
// condition variables and worker handles describe threads the child does not have (a child that touched them hung in
// pthread_cond_broadcast). The child therefore abandons the inherited pool (leaked on purpose: destroying it would
// join threads that do not exist) and starts a fresh one with the same thread count; its workers start on first use.
// The handler runs in the child before fork() returns, while it is still single-threaded, so no lock is needed.
std::atomic<ThreadPool*> g_pool{nullptr};

void start_fresh_pool_in_child() {
  ThreadPool* inherited = g_pool.load(std::memory_order_relaxed);
  g_pool.store(new ThreadPool(inherited ? inherited->threads() : default_threads()), std::memory_order_relaxed);
}

ThreadPool& pool() {
  static const bool initialised = [] {
    g_pool.store(new ThreadPool(default_threads()));
    pthread_atfork(nullptr, nullptr, &start_fresh_pool_in_child);
    return true;
  }();
  (void)initialised;
  return *g_pool.load(std::memory_order_acquire);
}

}  // namespace

int num_threads() { return pool().threads(); }
void set_num_threads(int threads) { pool().set_threads(threads); }

void parallel_for_raw(int64_t n, int64_t grain, int max_workers, RangeFn fn, void* ctx) {
  pool().parallel_for(n, grain, max_workers, fn, ctx);
}

}  // namespace cpu
}  // namespace tokenset
