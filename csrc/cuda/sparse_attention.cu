// Sparse attention on the GPU: correct, not tuned (no tensor cores yet). One block per list (grid-stride), a warp
// per query row of the block: lanes take 32 listed keys at a time (score = a serial dot product per lane), the warp
// keeps the online softmax (running max and sum), and the lanes own the output's dimensions, adding p_j v_j for the
// 32 keys in turn. The backward recomputes p from the saved lse, writes grad_q row by row and adds grad_k / grad_v
// with float32 atomics into a workspace (so their summation order varies from run to run), converted at the end.
#include <cmath>
#include <vector>

#include "attention_tokens.cuh"
#include "common.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/sparse_attention.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

struct DeviceAttention {
  DeviceTokens q, k, v, out, grad_out, grad_q;
  float* lse = nullptr;
  int64_t lse_batch_stride = 0;  // 4-D: H * N per batch; varlen: 0 (rows by cu)
  int64_t lse_head_stride = 0;   // 4-D: N; varlen: total
  const int64_t* list_base = nullptr;  // batch + 1
  const int64_t* key_offsets = nullptr;
  const int64_t* key_index = nullptr;
  const int64_t* row_map = nullptr;
  int64_t row_map_length = 0;
  int64_t batch = 0, heads = 0, group = 1, dim = 0, block_size = 64, key_block_size = 64;
  bool causal = false;
  float scale = 1.0f;

  __device__ int64_t query_length(int64_t b) const { return row_map ? row_map_length : q.rows(b); }
  __device__ int64_t key_length(int64_t b) const { return row_map ? row_map_length : k.rows(b); }
  __device__ int64_t physical(int64_t i) const { return row_map ? row_map[i] : i; }
  __device__ float* lse_row(int64_t b, int64_t h) const {
    return lse + (q.cu ? h * lse_head_stride + q.cu[b] : b * lse_batch_stride + h * lse_head_stride);
  }
  // The list's (batch, head, query block).
  __device__ void decode(int64_t list, int64_t& b, int64_t& h, int64_t& qb) const {
    b = 0;
    while (list >= list_base[b + 1]) ++b;
    const int64_t qblocks = (query_length(b) + block_size - 1) / block_size, within = list - list_base[b];
    h = within / qblocks;
    qb = within % qblocks;
  }
};

// One list's work: its (batch, head, query block), key head, lengths, causal shift, and the head's q / k / v origins.
template <typename T>
struct ListWork {
  int64_t b, h, qb, g, n, keys, shift, row_end;
  const T *q, *k, *v;
  __device__ ListWork(const DeviceAttention& a, int64_t list) {
    a.decode(list, b, h, qb);
    g = h / a.group;
    n = a.query_length(b);
    keys = a.key_length(b);
    shift = keys - n;
    row_end = imin((qb + 1) * a.block_size, n);
    q = static_cast<const T*>(a.q.data) + a.q.origin(b, h);
    k = static_cast<const T*>(a.k.data) + a.k.origin(b, g);
    v = static_cast<const T*>(a.v.data) + a.v.origin(b, g);
  }
};

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Walks the listed keys of logical row `row` 32 at a time: visit(key logical j or -1, physical row or -1) per lane,
// warp-uniform calls. Keys past the causal limit end the walk (lists are sorted).
template <typename Visit>
__device__ void for_each_key_group(const DeviceAttention& a, int64_t list, int64_t row, int64_t keys, int64_t shift,
                                   Visit&& visit) {
  const int lane = threadIdx.x & 31;
  const int64_t limit = a.causal ? row + shift + 1 : keys;  // keys >= limit are invisible to the row
  for (int64_t e = a.key_offsets[list]; e < a.key_offsets[list + 1]; ++e) {
    const int64_t start = a.key_index[e] * a.key_block_size;
    if (start >= limit) break;
    const int64_t end = imin(imin(start + a.key_block_size, keys), limit);
    for (int64_t j0 = start; j0 < end; j0 += 32) {
      const int64_t j = j0 + lane;
      const int64_t p = j < end ? a.physical(j) : -1;
      visit(p);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(DeviceAttention a, int64_t lists) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* q_s = smem + warp * 2 * a.dim;
  float* acc = q_s + a.dim;
  for (int64_t list = blockIdx.x; list < lists; list += gridDim.x) {
    const ListWork<T> w(a, list);
    const int64_t b = w.b, h = w.h, keys = w.keys, shift = w.shift;
    const T *q = w.q, *k = w.k, *v = w.v;
    T* out = static_cast<T*>(const_cast<void*>(a.out.data)) + a.out.origin(b, h);
    for (int64_t row = w.qb * a.block_size + warp; row < w.row_end; row += kWarps) {
      const int64_t pr = a.physical(row);
      if (pr < 0) continue;
      for (int64_t c = lane; c < a.dim; c += 32) {
        q_s[c] = to_float(q[pr * a.q.row_stride() + c]) * a.scale;
        acc[c] = 0.0f;
      }
      __syncwarp();
      float m = -INFINITY, l = 0.0f;
      for_each_key_group(a, list, row, keys, shift, [&](int64_t p) {
        const float s = p >= 0 ? dot_row(q_s, k + p * a.k.row_stride(), a.dim) : -INFINITY;
        // fmaxf drops NaN: a NaN score (or an earlier one, in m) makes the row NaN, as on the CPU.
        const bool nan = __any_sync(0xffffffffu, s != s) || m != m;
        const float m_new = nan ? NAN : fmaxf(m, warp_max(s));
        if (m_new == -INFINITY) return;
        const float pj = p >= 0 ? __expf(s - m_new) : 0.0f, alpha = __expf(m - m_new);
        l = l * alpha + warp_sum(pj);
        for (int64_t c = lane; c < a.dim; c += 32) acc[c] *= alpha;
        for (int t = 0; t < 32; ++t) {
          const float pt = __shfl_sync(0xffffffffu, pj, t);
          const int64_t kt = __shfl_sync(0xffffffffu, p, t);
          if (kt < 0) continue;
          const T* vrow = v + kt * a.v.row_stride();
          for (int64_t c = lane; c < a.dim; c += 32) acc[c] = fmaf(pt, to_float(vrow[c]), acc[c]);
        }
        m = m_new;
      });
      const bool seen = l > 0.0f || l != l;
      const float inv = seen ? 1.0f / l : 0.0f;
      for (int64_t c = lane; c < a.dim; c += 32) out[pr * a.out.row_stride() + c] = from_float<T>(acc[c] * inv);
      if (a.lse && lane == 0) a.lse_row(b, h)[pr] = seen ? m + logf(l) : -INFINITY;
      __syncwarp();
    }
  }
}

// dk / dv accumulator slot of (batch b, key head g, row): [B, Hkv, M, d] or [total_k, Hkv, d], compact.
__device__ __forceinline__ int64_t key_slot(const DeviceAttention& a, int64_t kv_heads, int64_t b, int64_t g,
                                            int64_t row) {
  return a.k.cu ? ((a.k.cu[b] + row) * kv_heads + g) * a.dim : ((b * kv_heads + g) * a.k.length + row) * a.dim;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(DeviceAttention a, int64_t lists, int64_t kv_heads,
                                                            float* dk, float* dv) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* q_s = smem + warp * 3 * a.dim;
  float* do_s = q_s + a.dim;
  float* dq = do_s + a.dim;
  for (int64_t list = blockIdx.x; list < lists; list += gridDim.x) {
    const ListWork<T> w(a, list);
    const int64_t b = w.b, h = w.h, g = w.g, keys = w.keys, shift = w.shift, r_end = w.row_end, qb = w.qb;
    const T *q = w.q, *k = w.k, *v = w.v;
    const T* out = static_cast<const T*>(a.out.data) + a.out.origin(b, h);
    const T* grad_out = static_cast<const T*>(a.grad_out.data) + a.grad_out.origin(b, h);
    T* grad_q = static_cast<T*>(const_cast<void*>(a.grad_q.data)) + a.grad_q.origin(b, h);
    const float* lse = a.lse_row(b, h);
    for (int64_t row = qb * a.block_size + warp; row < r_end; row += kWarps) {
      const int64_t pr = a.physical(row);
      if (pr < 0) continue;
      float delta = 0.0f;
      for (int64_t c = lane; c < a.dim; c += 32) {
        q_s[c] = to_float(q[pr * a.q.row_stride() + c]);
        do_s[c] = to_float(grad_out[pr * a.grad_out.row_stride() + c]);
        dq[c] = 0.0f;
        delta = fmaf(do_s[c], to_float(out[pr * a.out.row_stride() + c]), delta);
      }
      delta = warp_sum(delta);
      __syncwarp();
      const float row_lse = lse[pr];
      if (row_lse != -INFINITY) {
        for_each_key_group(a, list, row, keys, shift, [&](int64_t p) {
          float pj = 0.0f, ds = 0.0f;
          if (p >= 0) {
            pj = __expf(dot_row(q_s, k + p * a.k.row_stride(), a.dim) * a.scale - row_lse);
            ds = pj * (dot_row(do_s, v + p * a.v.row_stride(), a.dim) - delta);
          }
          for (int t = 0; t < 32; ++t) {
            const float pt = __shfl_sync(0xffffffffu, pj, t), dst = __shfl_sync(0xffffffffu, ds, t);
            const int64_t kt = __shfl_sync(0xffffffffu, p, t);
            if (kt < 0) continue;
            const T* krow = k + kt * a.k.row_stride();
            const int64_t slot = key_slot(a, kv_heads, b, g, kt);
            for (int64_t c = lane; c < a.dim; c += 32) {
              dq[c] = fmaf(dst, to_float(krow[c]), dq[c]);
              atomicAdd(dk + slot + c, dst * a.scale * q_s[c]);
              atomicAdd(dv + slot + c, pt * do_s[c]);
            }
          }
        });
      }
      for (int64_t c = lane; c < a.dim; c += 32) grad_q[pr * a.grad_q.row_stride() + c] = from_float<T>(dq[c] * a.scale);
      __syncwarp();
    }
  }
}

template <typename T>
__global__ void store_key_grads(DeviceAttention a, int64_t slots, int64_t kv_heads, const float* dk, const float* dv,
                                T* grad_k, T* grad_v, DeviceTokens gk, DeviceTokens gv) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < slots * a.dim;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t slot = i / a.dim, c = i % a.dim;
    int64_t at_k, at_v;
    if (a.k.cu) {
      const int64_t t = slot / kv_heads, g = slot % kv_heads;
      at_k = t * gk.s0 + g * gk.s1;
      at_v = t * gv.s0 + g * gv.s1;
    } else {
      const int64_t row = slot % a.k.length, g = (slot / a.k.length) % kv_heads, b = slot / (a.k.length * kv_heads);
      at_k = b * gk.s0 + g * gk.s1 + row * gk.s2;
      at_v = b * gv.s0 + g * gv.s1 + row * gv.s2;
    }
    grad_k[at_k + c] = from_float<T>(dk[i]);
    grad_v[at_v + c] = from_float<T>(dv[i]);
  }
}

// The device description (with the list bases uploaded into the workspace) of a validated params struct.
DeviceAttention describe(const SparseAttentionParams& p, int64_t* list_base_device, cudaStream_t stream) {
  DeviceAttention a;
  a.q = device_tokens(p.q, p.device_cu_seqlens_q);
  a.k = device_tokens(p.k, p.device_cu_seqlens_k);
  a.v = device_tokens(p.v, p.device_cu_seqlens_k);
  a.out = device_tokens(p.out, p.device_cu_seqlens_q);
  a.lse = p.lse;
  if (p.q.varlen()) {
    a.lse_head_stride = p.q.values.shape[0];
  } else {
    a.lse_head_stride = p.q.values.shape[2];
    a.lse_batch_stride = p.heads() * p.q.values.shape[2];
  }
  std::vector<int64_t> base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) base[b + 1] = base[b] + p.heads() * p.query_blocks(b);
  // Pageable source: the copy has left `base` when the call returns.
  TOKENSET_CUDA_CHECK(cudaMemcpyAsync(list_base_device, base.data(), base.size() * sizeof(int64_t),
                                      cudaMemcpyHostToDevice, stream));
  a.list_base = list_base_device;
  a.key_offsets = p.device_key_offsets;
  a.key_index = p.device_key_index;
  a.row_map = p.device_row_map;
  a.row_map_length = p.row_map ? p.row_map_length : 0;
  a.batch = p.batch;
  a.heads = p.heads();
  a.group = p.heads() / p.kv_heads();
  a.dim = p.dim();
  a.block_size = p.block_size;
  a.key_block_size = p.key_block_size;
  a.causal = p.causal;
  a.scale = p.scale;
  return a;
}

}  // namespace

void sparse_attention(const SparseAttentionParams& p, const Launch& launch) {
  validate(p);
  const int64_t lists = sparse_attention_lists(p);
  if (lists == 0) return;
  const cudaStream_t stream = stream_of(launch);
  WorkspaceCarver carve(launch.workspace);
  int64_t* list_base = carve.take<int64_t>(p.batch + 1);
  const DeviceAttention a = describe(p, list_base, stream);
  const size_t shared = static_cast<size_t>(kWarps) * 2 * p.dim() * sizeof(float);
  TOKENSET_FLOAT_SWITCH(p.q.values.dtype, kDType, [&] {
    forward_kernel<cuda_type_t<kDType>><<<grid_for(lists, 1), kThreads, shared, stream>>>(a, lists);
  });
  TOKENSET_CHECK_LAUNCH("sparse_attention");
}

void sparse_attention_backward(const SparseAttentionBackwardParams& bp, const Launch& launch) {
  validate(bp);
  const SparseAttentionParams& p = bp.forward;
  const cudaStream_t stream = stream_of(launch);
  WorkspaceCarver carve(launch.workspace);
  int64_t* list_base = carve.take<int64_t>(p.batch + 1);
  const int64_t key_values = p.k.values.numel();
  float* dk = carve.take<float>(key_values);
  float* dv = carve.take<float>(key_values);
  DeviceAttention a = describe(p, list_base, stream);
  a.grad_out = device_tokens(bp.grad_out, p.device_cu_seqlens_q);
  a.grad_q = device_tokens(bp.grad_q, p.device_cu_seqlens_q);
  if (key_values > 0) {
    TOKENSET_CUDA_CHECK(cudaMemsetAsync(dk, 0, key_values * sizeof(float), stream));
    TOKENSET_CUDA_CHECK(cudaMemsetAsync(dv, 0, key_values * sizeof(float), stream));
  }
  const int64_t lists = sparse_attention_lists(p);
  const size_t shared = static_cast<size_t>(kWarps) * 3 * p.dim() * sizeof(float);
  TOKENSET_FLOAT_SWITCH(p.q.values.dtype, kDType, [&] {
    using T = cuda_type_t<kDType>;
    if (lists > 0) {
      backward_kernel<T><<<grid_for(lists, 1), kThreads, shared, stream>>>(a, lists, p.kv_heads(), dk, dv);
      TOKENSET_CHECK_LAUNCH("sparse_attention_backward");
    }
    if (key_values > 0) {
      const int64_t slots = key_values / p.dim();
      store_key_grads<T><<<grid_for(key_values, 256), 256, 0, stream>>>(
          a, slots, p.kv_heads(), dk, dv, static_cast<T*>(bp.grad_k.values.data), static_cast<T*>(bp.grad_v.values.data),
          device_tokens(bp.grad_k, p.device_cu_seqlens_k), device_tokens(bp.grad_v, p.device_cu_seqlens_k));
      TOKENSET_CHECK_LAUNCH("sparse_attention_backward (key gradients)");
    }
  });
}

}  // namespace cuda
}  // namespace tokenset
