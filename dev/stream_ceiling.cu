// How fast a decode call's weights can be read, and what the boundary between its two GEMMs costs
// (experiment, never linked; issue 17). No arithmetic: every kernel here only moves the bytes a
// decode call at T = 1 moves (the K hit experts' GEMM1 weights, then their GEMM2 weights) from
// HBM into shared memory and reads them back, so each time is the ceiling of a loading scheme and
// a kernel structure, for the library's decode GEMMs to be measured against.
//
// Loaders:
//   rows   the decode GEMMs' scheme (kernels/sm90_decode_mainloop.cuh): a CTA of 4 warps owns 32
//          weight rows; each warp walks every fourth 32-wide k block, each lane cp.asyncs 16 bytes
//          of rows g, g + 8, g + 16 and g + 24 into its warp's 4-slot ring (2 KiB a slot, 3 slots
//          in flight), 4 CTAs per SM (launch bounds), one CTA per 32 rows.
//   bulk   one producer thread per CTA issues cp.async.bulk copies (TMA, 1-D) of `chunk` bytes of
//          the CTA's contiguous share into a ring of `stages` slots, completing on mbarriers; 4
//          consumer warps read each slot back and free it; `ctas` CTAs per SM, persistent.
// Structures (phase 1 = GEMM1's bytes, phase 2 = GEMM2's, which may only be consumed once every
// CTA has consumed phase 1):
//   one kernel per phase, in stream order without PDL ("serial");
//   the same with PDL: the first lets the second launch at once, the second waits
//     (griddepcontrol.wait) before it loads anything ("pdl") or only before it consumes, its
//     loads issued at once ("pdl-pre": its weights do not depend on the first kernel);
//   one persistent bulk kernel with a grid barrier between the phases: the producer streams on
//     across it, stages ahead ("fused"), or first loads the CTA's phase-2 share into shared
//     memory of its own, as far as it fits, then streams phase 1 through a smaller ring
//     ("fused-resident");
//   one kernel over both phases' bytes with no barrier ("stream": the bound of any structure).
// Each time: the median of `reps` replays of a CUDA graph holding the kernels, by events around
// the graph launch, L2 flushed before each, outside the events, by reading twice its size (clean
// lines, as bench/timing.py does; STREAM_FLUSH=write: a memset instead, whose dirty lines the
// timed graph then writes back: the first run's flush, which cost its streams several us);
// "empty" is a graph of one empty kernel (the graph launch and events alone), "copy" a 1 GiB
// device-to-device copy kernel (read + write, the benchmark's BW). TB/s = bytes / time, the fixed cost included.
// Build (after nothing else):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -Isrc -Iinclude \
//     dev/stream_ceiling.cu -o /tmp/stream_ceiling
// Run: /tmp/stream_ceiling [reps]; env STREAM_CHUNK_KB, STREAM_STAGES, STREAM_CTAS (the bulk
// loader's defaults 16, 6, 1) and STREAM_SWEEP=0 (skips the sweeps: the bulk loader's chunk x
// stages x CTAs per SM, and the rows loader's 2-8 warps x 4-8 slots and 64 rows a CTA, on
// qwen3-30b's GEMM1 bytes).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "device/decode_ptx.cuh"
#include "device/ptx.cuh"

#include "dev/check.cuh"

namespace {
using namespace fusedmoe;

// ---- PTX the library does not use ---------------------------------------------------------------
// 1-D bulk copy (TMA) of `bytes` (a multiple of 16; both addresses 16-byte aligned) into this
// CTA's shared memory, counted on `bar` as complete_tx.
__device__ __forceinline__ void bulk_copy_g2s(void* smem, const void* gmem, uint32_t bytes,
                                              uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(ptx::smem_u32(smem)),
      "l"(gmem), "r"(bytes), "r"(ptx::smem_u32(bar))
      : "memory");
}

__device__ __forceinline__ uint32_t ld_acquire_gpu(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every CTA of the grid arrives; returns once all have. The counter only grows (no reset between
// launches): the k-th arrival waits for the end of its own round of gridDim.x arrivals. Needs the
// whole grid resident (the grid here is at most the SMs' capacity, on an otherwise idle GPU).
// Called by one thread of the CTA.
__device__ __forceinline__ void grid_barrier(uint32_t* counter) {
  __threadfence();
  const uint32_t old = atomicAdd(counter, 1u);
  const uint32_t target = (old / gridDim.x + 1u) * gridDim.x;
  while (int32_t(ld_acquire_gpu(counter) - target) < 0) {
  }
}

__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- the decode GEMMs' loader -------------------------------------------------------------------
struct RowsArgs {
  const uint8_t* base;  // the phase's bytes: rows of row_bytes, 8 kPieces rows per CTA
  int64_t row_bytes;
  bool trigger;   // griddepcontrol.launch_dependents at the start
  bool wait;      // griddepcontrol.wait before the first load
  bool wait_pre;  // griddepcontrol.wait after the first kStages - 1 slots' loads
  uint32_t* sink;
};

// kWarps warps split the 64-byte k blocks; kStages slots a warp (kStages - 1 in flight); a CTA
// owns 8 kPieces weight rows, each lane copying 16 bytes of rows g, g + 8, ... (kPieces of them)
// a slot. The library's decode GEMMs: <4, 4, 4> (and 8 or 2 warps by grid size); the others ask
// whether a deeper ring, more warps or more rows per CTA would stream faster. 16 warps per SM
// where shared memory allows.
template <int kWarps, int kStages, int kPieces = 4>
__global__ void __launch_bounds__(32 * kWarps, 16 / kWarps) rows_kernel(RowsArgs args) {
  constexpr int kRowsPieces = kPieces;
  extern __shared__ uint4 ring_raw[];
  auto ring = reinterpret_cast<uint4(*)[kStages][kRowsPieces][32]>(ring_raw);
  if (args.trigger) ptx::griddepcontrol_launch_dependents();
  if (args.wait) ptx::griddepcontrol_wait();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const uint8_t* cta = args.base + int64_t(blockIdx.x) * 8 * kPieces * args.row_bytes;
  const int blocks = int(args.row_bytes / 64);  // 64 bytes of each row per k block
  auto issue = [&](int it) {
    const int kb = warp + it * kWarps;
    const bool valid = kb < blocks;
#pragma unroll
    for (int p = 0; p < kRowsPieces; ++p) {
      const uint8_t* src = cta + int64_t(g + 8 * p) * args.row_bytes + kb * 64 + 16 * t;
      ptx::cp_async_16_zfill_l2_256(&ring[warp][it % kStages][p][lane], valid ? src : args.base,
                                    valid);
    }
    ptx::cp_async_commit();
  };
  uint32_t acc = 0;
  const int iterations = (blocks - warp + kWarps - 1) / kWarps;
#pragma unroll
  for (int it = 0; it < kStages - 1; ++it) issue(it);
  if (args.wait_pre) ptx::griddepcontrol_wait();
  for (int it = 0; it < iterations; ++it) {
    issue(it + kStages - 1);
    ptx::cp_async_wait_group<kStages - 1>();
#pragma unroll
    for (int p = 0; p < kRowsPieces; ++p) {
      const uint4 v = ring[warp][it % kStages][p][lane];
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
  }
  if (acc == 0x9E3779B9u) args.sink[blockIdx.x] = acc;  // keeps the reads; never true in practice
}

template <int kWarps, int kStages, int kPieces = 4>
constexpr size_t rows_smem() {
  return sizeof(uint4) * kWarps * kStages * kPieces * 32;
}

// ---- the bulk loader ----------------------------------------------------------------------------
constexpr int kBulkConsumers = 4;  // consumer warps; warp 0 produces
constexpr int kBulkThreads = 32 * (kBulkConsumers + 1);

struct BulkArgs {
  const uint8_t* p1;  // phase 1 (consumed first)
  int64_t p1_bytes;
  const uint8_t* p2;  // phase 2, after the grid barrier (nullptr: one phase)
  int64_t p2_bytes;
  uint32_t chunk, stages;
  uint32_t resident;  // bytes of shared memory for the CTA's phase-2 share (0: none)
  bool trigger, wait, wait_pre;  // as RowsArgs; wait_pre: the consumers wait, the producer not
  uint32_t* counter;             // the grid barrier's (two phases only)
  uint32_t* sink;
};

// The CTA's share [begin, end) of `bytes` cut into `chunk`-byte pieces, contiguous and balanced.
struct Share {
  int64_t begin, end;
};
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ Share cta_share(int64_t bytes, uint32_t chunk) {
  const int64_t chunks = (bytes + chunk - 1) / chunk;
  const int64_t b = chunks * blockIdx.x / gridDim.x, e = chunks * (blockIdx.x + 1) / gridDim.x;
  return {min64(b * chunk, bytes), min64(e * chunk, bytes)};
}

__global__ void __launch_bounds__(kBulkThreads, 1) bulk_kernel(BulkArgs args) {
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* ring = smem;
  uint8_t* resident = ring + size_t(args.chunk) * args.stages;
  uint64_t* full = reinterpret_cast<uint64_t*>(resident + args.resident);
  uint64_t* empty = full + args.stages;
  uint64_t* resident_full = empty + args.stages;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (uint32_t s = 0; s < args.stages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], kBulkConsumers);
    }
    ptx::mbarrier_init(resident_full, 1);
    ptx::fence_barrier_init();
  }
  __syncthreads();
  if (args.trigger) ptx::griddepcontrol_launch_dependents();
  const Share s1 = cta_share(args.p1_bytes, args.chunk);
  const Share s2 = args.p2 ? cta_share(args.p2_bytes, args.chunk) : Share{0, 0};
  const int64_t kept = min64(args.resident, s2.end - s2.begin);  // resident bytes

  if (warp == 0) {  // producer
    if (lane != 0) return;
    if (args.wait) ptx::griddepcontrol_wait();
    if (kept > 0) {
      ptx::mbarrier_arrive_expect_tx(resident_full, uint32_t(kept));
      for (int64_t o = 0; o < kept; o += args.chunk)
        bulk_copy_g2s(resident + o, args.p2 + s2.begin + o,
                      uint32_t(min64(args.chunk, kept - o)), resident_full);
    }
    uint32_t stage = 0, phase = 0;
    auto push = [&](const uint8_t* src, uint32_t n) {
      ptx::mbarrier_wait(&empty[stage], phase ^ 1u);
      ptx::mbarrier_arrive_expect_tx(&full[stage], n);
      bulk_copy_g2s(ring + size_t(stage) * args.chunk, src, n, &full[stage]);
      if (++stage == args.stages) stage = 0, phase ^= 1u;
    };
    for (int64_t o = s1.begin; o < s1.end; o += args.chunk)
      push(args.p1 + o, uint32_t(min64(args.chunk, s1.end - o)));
    for (int64_t o = s2.begin + kept; o < s2.end; o += args.chunk)
      push(args.p2 + o, uint32_t(min64(args.chunk, s2.end - o)));
    return;
  }

  // consumers
  const int ct = threadIdx.x - 32;  // 0 .. 127
  if (args.wait || args.wait_pre) ptx::griddepcontrol_wait();
  uint32_t acc = 0, stage = 0, phase = 0;
  auto read = [&](const uint8_t* p, int64_t n) {
    for (int64_t i = ct * 16; i < n; i += 16 * 32 * kBulkConsumers) {
      const uint4 v = ptx::ld_shared_v4(p + i);
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
  };
  auto pop = [&](int64_t n) {
    ptx::mbarrier_wait(&full[stage], phase);
    read(ring + size_t(stage) * args.chunk, n);
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(&empty[stage]);
    if (++stage == args.stages) stage = 0, phase ^= 1u;
  };
  for (int64_t o = s1.begin; o < s1.end; o += args.chunk)
    pop(min64(args.chunk, s1.end - o));
  if (args.p2) {
    named_barrier_sync(1, 32 * kBulkConsumers);
    if (ct == 0) grid_barrier(args.counter);
    named_barrier_sync(1, 32 * kBulkConsumers);
    if (kept > 0) {
      ptx::mbarrier_wait(resident_full, 0);
      read(resident, kept);
    }
    for (int64_t o = s2.begin + kept; o < s2.end; o += args.chunk)
      pop(min64(args.chunk, s2.end - o));
  }
  if (acc == 0x9E3779B9u) args.sink[blockIdx.x] = acc;
}

__global__ void empty_kernel() {}

// Reads `n` 16-byte words (the L2 flush: a read leaves clean lines, so that no write-back of the
// flush lands in the timed graph, as in the benchmark's bench/timing.py).
__global__ void read_kernel(const uint4* __restrict__ src, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = src[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) sink[blockIdx.x] = acc;
}

// A device-to-device copy by SMs (the benchmark's BW is a copy kernel's; cudaMemcpyAsync may
// take a copy engine, which is slower).
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    dst[i] = src[i];
  }
}

// ---- host ---------------------------------------------------------------------------------------
struct Bench {
  cudaStream_t stream;
  void* flush;
  size_t flush_bytes;
  bool flush_by_write;  // STREAM_FLUSH=write: a memset (dirty lines, written back in the timed graph)
  uint32_t* flush_sink;
  int sms;
  cudaEvent_t start, stop;
  int reps;

  // The median time of `launches` captured once into a graph.
  float time_graph(const std::function<void()>& launches) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    launches();
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphLaunch(exec, stream));  // warm-up
    std::vector<float> ms;
    for (int r = 0; r < reps; ++r) {
      if (flush_by_write) {
        CHECK(cudaMemsetAsync(flush, r & 0xFF, flush_bytes, stream));
      } else {
        read_kernel<<<sms * 4, 512, 0, stream>>>(static_cast<const uint4*>(flush),
                                                  flush_bytes / 16, flush_sink);
      }
      CHECK(cudaEventRecord(start, stream));
      CHECK(cudaGraphLaunch(exec, stream));
      CHECK(cudaEventRecord(stop, stream));
      CHECK(cudaEventSynchronize(stop));
      float t;
      CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1000.0f;  // us
  }
};

template <class Args>
void launch(void (*kernel)(Args), dim3 grid, int threads, size_t smem, bool pdl, const Args& args,
            cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = pdl ? 1 : 0;
  CHECK(cudaLaunchKernelEx(&config, kernel, args));
}

struct Shape {
  const char* name;
  double p1_mb, p2_mb;          // GEMM1's and GEMM2's weights at T = 1 (MB = 1e6 bytes)
  int64_t row1_bytes, row2_bytes;  // a weight row of each (H and I elements)
};

// The bulk loader's launch for one or two phases.
struct BulkConfig {
  uint32_t chunk, stages, ctas_per_sm, resident;
  size_t smem() const {
    return size_t(chunk) * stages + resident + sizeof(uint64_t) * (2 * stages + 1);
  }
};

}  // namespace

int main(int argc, char** argv) {
  Bench b{};
  b.reps = argc > 1 ? std::atoi(argv[1]) : 20;
  auto env = [](const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v ? std::atoi(v) : fallback;
  };
  const BulkConfig bulk{uint32_t(env("STREAM_CHUNK_KB", 16)) << 10,
                        uint32_t(env("STREAM_STAGES", 6)), uint32_t(env("STREAM_CTAS", 1)), 0};
  const bool sweep = env("STREAM_SWEEP", 1) != 0;
  int sms = 0, smem_optin = 0, smem_sm = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0));
  CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  CHECK(cudaFuncSetAttribute(bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem_optin));
  CHECK(cudaFuncSetAttribute(rows_kernel<8, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(rows_smem<8, 4>())));
  CHECK(cudaFuncSetAttribute(rows_kernel<4, 4, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(rows_smem<4, 4, 8>())));
  CHECK(cudaFuncSetAttribute(rows_kernel<8, 4, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(rows_smem<8, 4, 8>())));
  CHECK(cudaFuncSetAttribute(rows_kernel<4, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(rows_smem<4, 8>())));
  CHECK(cudaFuncSetAttribute(rows_kernel<8, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(rows_smem<8, 8>())));
  CHECK(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking));
  CHECK(cudaEventCreate(&b.start));
  CHECK(cudaEventCreate(&b.stop));
  {
    int l2 = 0;
    CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    b.flush_bytes = std::max(size_t(2) * size_t(l2), size_t(64) << 20) / 16 * 16;
  }
  const char* flush_mode = std::getenv("STREAM_FLUSH");
  b.flush_by_write = flush_mode != nullptr && std::string(flush_mode) == "write";
  b.sms = sms;
  CHECK(cudaMalloc(&b.flush, b.flush_bytes));
  CHECK(cudaMemset(b.flush, 0x3C, b.flush_bytes));
  CHECK(cudaMalloc(&b.flush_sink, size_t(sms) * 4 * sizeof(uint32_t)));

  const std::vector<Shape> shapes = {
      {"qwen3-30b-a3b bf16", 8 * 1536 * 2048 * 2 / 1e6, 8 * 2048 * 768 * 2 / 1e6, 4096, 1536},
      {"qwen3-30b-a3b fp8", 8 * 1536 * 2048 / 1e6, 8 * 2048 * 768 / 1e6, 2048, 768},
      {"gpt-oss-120b bf16", 4 * 5760.0 * 2880 * 2 / 1e6, 4 * 2880.0 * 2880 * 2 / 1e6, 5760, 5760},
      {"llama4-scout bf16", 16384.0 * 5120 * 2 / 1e6, 5120.0 * 8192 * 2 / 1e6, 10240, 16384},
      {"deepseek-v3 fp8", 8 * 4096.0 * 7168 / 1e6, 8 * 7168.0 * 2048 / 1e6, 7168, 2048},
  };
  // One pool for both phases, each rounded up to whole 32-row CTAs and 64 KiB.
  size_t pool_bytes = 0;
  for (const Shape& s : shapes) pool_bytes = std::max(pool_bytes, size_t((s.p1_mb + s.p2_mb) * 1e6));
  pool_bytes += size_t(64) << 20;
  pool_bytes = std::max(pool_bytes, size_t(1) << 30);  // the source of the 1 GiB copy too
  uint8_t* pool;
  uint32_t *sink, *counter;
  CHECK(cudaMalloc(&pool, pool_bytes));
  CHECK(cudaMemset(pool, 0x5A, pool_bytes));
  CHECK(cudaMalloc(&sink, 1 << 20));
  CHECK(cudaMalloc(&counter, 2 * sizeof(uint32_t)));
  CHECK(cudaMemset(counter, 0, 2 * sizeof(uint32_t)));

  const float empty_us = b.time_graph([&] { empty_kernel<<<1, 32, 0, b.stream>>>(); });
  float copy_us;
  {
    void* dst;
    const size_t n = size_t(1) << 30;
    CHECK(cudaMalloc(&dst, n));
    copy_us = b.time_graph([&] {
      copy_kernel<<<sms * 4, 512, 0, b.stream>>>(reinterpret_cast<const uint4*>(pool),
                                                 static_cast<uint4*>(dst), n / 16);
    });
    CHECK(cudaFree(dst));
    std::printf("L2 flushed by %s %.0f MiB; empty graph %.1f us; copy kernel of 1 GiB %.1f us = "
                "%.0f GB/s (read + write); %d SMs\n",
                b.flush_by_write ? "a memset of" : "reading", b.flush_bytes / 1048576.0, empty_us,
                copy_us, 2.0 * (size_t(1) << 30) / copy_us / 1e3, sms);
  }

  // Launch helpers. rows: one kernel over `bytes` of 32-row CTAs. bulk: one kernel over one or
  // two phases.
  auto rows_as = [&](auto kernel, int warps, size_t smem, const uint8_t* base, int64_t bytes,
                     int64_t row_bytes, bool pdl, bool trigger, bool wait, bool wait_pre,
                     int rows_per_cta = 32) {
    const int64_t ctas = bytes / (rows_per_cta * row_bytes);
    launch(kernel, dim3(unsigned(ctas)), 32 * warps, smem, pdl,
           RowsArgs{base, row_bytes, trigger, wait, wait_pre, sink}, b.stream);
  };
  // The library's decode loader: 4 warps, 4 slots.
  auto rows = [&](const uint8_t* base, int64_t bytes, int64_t row_bytes, bool pdl, bool trigger,
                  bool wait, bool wait_pre) {
    rows_as(rows_kernel<4, 4>, 4, rows_smem<4, 4>(), base, bytes, row_bytes, pdl, trigger, wait,
            wait_pre);
  };
  // A grid barrier needs every CTA resident at once: checked before capture (not a stream call).
  auto check_resident = [&](const BulkConfig& c) {
    int per_sm = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, bulk_kernel, kBulkThreads,
                                                        c.smem()));
    if (per_sm < int(c.ctas_per_sm)) {
      std::printf("a grid barrier over %u CTAs per SM needs them resident (%d fit)\n",
                  c.ctas_per_sm, per_sm);
      std::exit(1);
    }
  };
  // Each two-phase launch site gets a grid barrier counter of its own (site), since a counter
  // serves one grid size only.
  auto bulk_launch = [&](const BulkConfig& c, const uint8_t* p1, int64_t n1, const uint8_t* p2,
                         int64_t n2, bool pdl, bool trigger, bool wait, bool wait_pre,
                         int site = 0) {
    launch(bulk_kernel, dim3(unsigned(sms * c.ctas_per_sm)), kBulkThreads, c.smem(), pdl,
           BulkArgs{p1, n1, p2, n2, c.chunk, c.stages, c.resident, trigger, wait, wait_pre,
                    counter + site, sink},
           b.stream);
  };
  const double copy_bytes_per_us = 2.0 * double(size_t(1) << 30) / copy_us;
  auto line = [&](const char* shape, const char* what, double mb, float us) {
    std::printf("%-20s %-36s %7.1f MB %8.1f us %5.2f TB/s, %5.1f us past the bytes at the copy's"
                " rate\n",
                shape, what, mb, us, mb / us, us - mb * 1e6 / copy_bytes_per_us);
  };

  if (sweep) {  // the bulk loader's ring at qwen3-30b's GEMM1 (bf16), one phase
    const Shape& s = shapes[0];
    const int64_t n = int64_t(s.p1_mb * 1e6) / (32 * s.row1_bytes) * (32 * s.row1_bytes);
    for (uint32_t ctas : {1u, 2u})
      for (uint32_t kb : {8u, 16u, 32u})
        for (uint32_t stages : {4u, 8u}) {
          const BulkConfig c{kb << 10, stages, ctas, 0};
          if (c.smem() > size_t(smem_optin) || (c.smem() + 1024) * ctas > size_t(smem_sm)) continue;
          char what[64];
          std::snprintf(what, sizeof what, "bulk %u KiB x %u, %u CTA/SM", kb, stages, ctas);
          line(s.name, what, n / 1e6,
               b.time_graph([&] { bulk_launch(c, pool, n, nullptr, 0, false, false, false, false); }));
        }
  }

  if (sweep) {  // the decode loader's ring and warps at qwen3-30b's GEMM1, bf16 and fp8
    for (int which = 0; which < 2; ++which) {
      const Shape& s = shapes[which];
      const int64_t n = int64_t(s.p1_mb * 1e6) / (32 * s.row1_bytes) * (32 * s.row1_bytes);
      auto one = [&](const char* what, auto kernel, int warps, size_t smem, int rows = 32) {
        const int64_t m = n / (rows * s.row1_bytes) * (rows * s.row1_bytes);  // whole CTAs
        line(s.name, what, m / 1e6, b.time_graph([&] {
               rows_as(kernel, warps, smem, pool, m, s.row1_bytes, false, false, false, false,
                       rows);
             }));
      };
      one("rows 4 warps x 4 slots (the library)", rows_kernel<4, 4>, 4, rows_smem<4, 4>());
      one("rows 2 warps x 4 slots", rows_kernel<2, 4>, 2, rows_smem<2, 4>());
      one("rows 8 warps x 4 slots", rows_kernel<8, 4>, 8, rows_smem<8, 4>());
      one("rows 4 warps x 8 slots", rows_kernel<4, 8>, 4, rows_smem<4, 8>());
      one("rows 8 warps x 8 slots", rows_kernel<8, 8>, 8, rows_smem<8, 8>());
      one("rows 4 warps x 4 slots, 64 rows a CTA", rows_kernel<4, 4, 8>, 4,
          rows_smem<4, 4, 8>(), 64);
      one("rows 8 warps x 4 slots, 64 rows a CTA", rows_kernel<8, 4, 8>, 8,
          rows_smem<8, 4, 8>(), 64);
    }
  }

  for (const Shape& s : shapes) {
    // Whole 32-row CTAs of each phase, phase 2 right after phase 1.
    const int64_t n1 = int64_t(s.p1_mb * 1e6) / (32 * s.row1_bytes) * (32 * s.row1_bytes);
    const int64_t n2 = int64_t(s.p2_mb * 1e6) / (32 * s.row2_bytes) * (32 * s.row2_bytes);
    const uint8_t* p1 = pool;
    const uint8_t* p2 = pool + ((n1 + 65535) / 65536) * 65536;
    const double mb1 = n1 / 1e6, mb2 = n2 / 1e6, mb = mb1 + mb2;
    auto t = [&](const std::function<void()>& f) { return b.time_graph(f); };
    line(s.name, "rows, phase 1", mb1, t([&] { rows(p1, n1, s.row1_bytes, false, false, false, false); }));
    line(s.name, "rows, phase 2", mb2, t([&] { rows(p2, n2, s.row2_bytes, false, false, false, false); }));
    line(s.name, "bulk, phase 1", mb1,
         t([&] { bulk_launch(bulk, p1, n1, nullptr, 0, false, false, false, false); }));
    line(s.name, "bulk, phase 2", mb2,
         t([&] { bulk_launch(bulk, p2, n2, nullptr, 0, false, false, false, false); }));
    line(s.name, "rows 1 -> rows 2, serial", mb, t([&] {
           rows(p1, n1, s.row1_bytes, false, false, false, false);
           rows(p2, n2, s.row2_bytes, false, false, false, false);
         }));
    line(s.name, "rows 1 -> rows 2, pdl", mb, t([&] {
           rows(p1, n1, s.row1_bytes, false, true, false, false);
           rows(p2, n2, s.row2_bytes, true, false, true, false);
         }));
    line(s.name, "rows 1 -> rows 2, pdl-pre", mb, t([&] {
           rows(p1, n1, s.row1_bytes, false, true, false, false);
           rows(p2, n2, s.row2_bytes, true, false, false, true);
         }));
    line(s.name, "bulk 1 -> bulk 2, serial", mb, t([&] {
           bulk_launch(bulk, p1, n1, nullptr, 0, false, false, false, false);
           bulk_launch(bulk, p2, n2, nullptr, 0, false, false, false, false);
         }));
    line(s.name, "bulk 1 -> bulk 2, pdl", mb, t([&] {
           bulk_launch(bulk, p1, n1, nullptr, 0, false, true, false, false);
           bulk_launch(bulk, p2, n2, nullptr, 0, true, false, true, false);
         }));
    line(s.name, "bulk 1 -> bulk 2, pdl-pre", mb, t([&] {
           bulk_launch(bulk, p1, n1, nullptr, 0, false, true, false, false);
           bulk_launch(bulk, p2, n2, nullptr, 0, true, false, false, true);
         }));
    check_resident(bulk);
    line(s.name, "fused (grid barrier)", mb,
         t([&] { bulk_launch(bulk, p1, n1, p2, n2, false, false, false, false, 0); }));
    {  // the CTA's phase-2 share kept in shared memory as far as it fits beside a 4 x 16 KiB ring
      BulkConfig c{16u << 10, 4, 1, 0};
      const int64_t share = (n2 / c.chunk + sms) / sms * c.chunk;  // at most a CTA's share
      c.resident = uint32_t(std::min<int64_t>(
          share, (int64_t(smem_optin) - int64_t(c.smem()) - 1024) / c.chunk * c.chunk));
      check_resident(c);
      char what[64];
      std::snprintf(what, sizeof what, "fused-resident (%u of %lld KiB)", c.resident >> 10,
                    static_cast<long long>(share >> 10));
      line(s.name, what, mb, t([&] { bulk_launch(c, p1, n1, p2, n2, false, false, false, false, 1); }));
    }
    line(s.name, "stream (both phases, no barrier)", mb,
         t([&] { bulk_launch(bulk, p1, p2 - p1 + n2, nullptr, 0, false, false, false, false); }));
  }
  CHECK(cudaDeviceSynchronize());
  std::printf("done\n");
  return 0;
}
