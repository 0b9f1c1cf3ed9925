// Fuzz target (issue 7): argument validation and routing decode against the CPU reference.
//
// Every input is a byte string read as a little program that builds one MoeArguments:
//   1. validate() on hostile arguments (limits +-1, negative and huge sizes, bad enum values,
//      null or dangling pointers, both or neither routing input, the FP8 variant's dtypes, sizes
//      and scales): it never crashes and accepts
//      exactly when an independent transcription of SPEC's rules (expected_valid below) does;
//      a rejection reads "<argument>: expected <x>, got <y>" and run_reference() rejects alike.
//   2. run_reference() on small valid shapes with random, mostly hostile routing (raw int32 ids,
//      NaN/inf/denormal weight bits, NaN/inf logits, every method and dtype, shards; one call in
//      four with FP8 weights of hostile e4m3 codes and scales): it never
//      crashes, writes only inside its outputs (guard bytes around each stay intact, and
//      AddressSanitizer watches the inputs), writes every element it promises, never changes an
//      input, gives the same bits twice; ids outside [0, E) and outside the shard are non-local
//      (map -1), routed weights come back bit for bit, and validate_routing_host() reports the
//      first id outside [0, E).
// Built with clang's libFuzzer when available (tests/fuzz/CMakeLists.txt); otherwise the
// standalone driver at the bottom feeds it seeded random inputs for a fixed time budget.
// A failed property calls abort() with a message, which both drivers report as a crash.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fusedmoe/fusedmoe.h"
#include "reference/bf16.h"
#include "validate.h"

namespace {

using namespace fusedmoe;

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_moe property failed: %s %s\n", what, detail.c_str());
  std::abort();
}
#define FUZZ_CHECK(cond, ...)                \
  do {                                       \
    if (!(cond)) fail(#cond, ##__VA_ARGS__); \
  } while (0)

// Reads the fuzzer's bytes as numbers; past the end every read returns zeros.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint64_t bits(int num_bytes) {
    uint64_t value = 0;
    for (int i = 0; i < num_bytes; ++i) {
      value |= static_cast<uint64_t>(pos_ < size_ ? data_[pos_++] : 0) << (8 * i);
    }
    return value;
  }
  int64_t range(int64_t lo, int64_t hi) {  // inclusive, hi - lo < 2^32
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>(bits(4) % span);
  }
  bool flag() { return bits(1) & 1; }
  template <typename T, size_t N>
  T pick(const T (&values)[N]) {
    return values[bits(1) % N];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// ---- 1. validate() against an independent transcription of SPEC's rules -----------------------

bool expected_valid(const MoeArguments& a) {
  const MoeShape& s = a.shape;
  const auto is_dtype = [](DType d) { return d == DType::kBF16 || d == DType::kFP32; };
  if (s.num_tokens < 0) return false;
  for (int64_t size : {s.hidden_size, s.intermediate_size}) {
    if (size <= 0 || size % 8 != 0 || size > (int64_t{1} << 20)) return false;
  }
  if (s.num_experts < 1 || s.num_experts > 1024) return false;
  if (s.top_k < 1 || s.top_k > 32 || s.top_k > s.num_experts) return false;
  if (s.num_tokens > (int64_t{1} << 30) / s.top_k) return false;  // T * K <= 2^30
  if (s.local_num_experts < 1 || s.local_expert_offset < 0) return false;
  if (int64_t{s.local_expert_offset} + s.local_num_experts > s.num_experts) return false;
  if (a.weight_layout != WeightLayout::kCanonical || !is_dtype(a.expert_weights_dtype)) {
    return false;
  }
  // The FP8 variant's element types, sizes and scales.
  const auto bf16_or_fp8 = [](DType d) { return d == DType::kBF16 || d == DType::kFP8E4M3; };
  if (!bf16_or_fp8(a.weights_dtype) || !bf16_or_fp8(a.hidden_states_dtype)) return false;
  if (a.weights_dtype == DType::kBF16) {
    if (a.hidden_states_dtype != DType::kBF16) return false;
    if (a.gemm1_weights_scale || a.gemm2_weights_scale || a.hidden_states_scale) return false;
  } else {
    if (s.hidden_size % 128 != 0 || s.intermediate_size % 128 != 0) return false;
    if (!a.gemm1_weights_scale || !a.gemm2_weights_scale) return false;
    if (a.hidden_states_dtype == DType::kBF16 && a.hidden_states_scale) return false;
    if (a.hidden_states_dtype == DType::kFP8E4M3 && s.num_tokens > 0 && !a.hidden_states_scale) {
      return false;
    }
  }
  const bool has_logits = a.logits.logits != nullptr, has_ids = a.routed.topk_ids != nullptr;
  if (has_logits == has_ids) return false;
  if (has_logits) {
    const LogitsRouting& l = a.logits;
    const int method = static_cast<int>(l.method);
    if (a.routed.topk_weights || method < 0 || method > 9 || !is_dtype(l.logits_dtype)) {
      return false;
    }
    if (l.bias && !is_dtype(l.bias_dtype)) return false;
    if (!std::isfinite(l.routed_scaling_factor)) return false;
    if (l.method == RoutingMethod::kLlama4 && s.top_k != 1) return false;
    if (l.method == RoutingMethod::kDeepSeekV3) {
      if (l.n_group < 0 || l.topk_group < 0) return false;
      const int32_t groups = l.n_group == 0 ? 1 : l.n_group;
      const int32_t kept = l.topk_group == 0 ? groups : l.topk_group;
      if (s.num_experts % groups != 0 || kept > groups) return false;
      if (s.top_k > int64_t{kept} * (s.num_experts / groups)) return false;
    }
  } else {
    if (a.logits.bias) return false;
    if (a.routed.topk_weights == nullptr) {
      if (a.expert_weights_dtype != DType::kBF16) return false;
    } else if (!is_dtype(a.routed.weights_dtype) ||
               a.expert_weights_dtype != a.routed.weights_dtype) {
      return false;
    }
  }
  if (!a.gemm1_weights || !a.gemm2_weights) return false;
  if (s.num_tokens == 0) return true;
  if (!a.hidden_states) return false;
  if (a.do_finalize) return a.output != nullptr;
  return a.gemm2_output && a.expert_weights && a.expanded_idx_to_permuted_idx;
}

void fuzz_validate(Bytes& in) {
  static const int64_t kSizes[] = {0,
                                   1,
                                   7,
                                   8,
                                   16,
                                   2880,
                                   7168,
                                   -8,
                                   -1,
                                   (1 << 20),
                                   (1 << 20) + 8,
                                   int64_t{1} << 40,
                                   std::numeric_limits<int64_t>::max(),
                                   std::numeric_limits<int64_t>::min()};
  static const int64_t kTokens[] = {0,
                                    1,
                                    5,
                                    65536,
                                    (int64_t{1} << 25),
                                    (int64_t{1} << 25) + 1,
                                    (int64_t{1} << 30),
                                    (int64_t{1} << 30) + 1,
                                    -1,
                                    std::numeric_limits<int64_t>::max()};
  static const int32_t kSmall[] = {0,
                                   1,
                                   2,
                                   3,
                                   4,
                                   8,
                                   31,
                                   32,
                                   33,
                                   64,
                                   256,
                                   1023,
                                   1024,
                                   1025,
                                   -1,
                                   std::numeric_limits<int32_t>::max(),
                                   std::numeric_limits<int32_t>::min()};
  static const float kScales[] = {1.0f,
                                  2.5f,
                                  0.0f,
                                  -1.0f,
                                  1e30f,
                                  std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity(),
                                  std::numeric_limits<float>::quiet_NaN()};
  static const int kEnums[] = {0, 1, 2, 3, 5, 9, 10, -1, 255};
  static int32_t dummy[4];  // non-null, never dereferenced by validate()
  auto pointer = [&](int null_odds) -> void* {
    return in.range(0, null_odds) == 0 ? nullptr : dummy;
  };

  MoeArguments a;
  a.shape.num_tokens = in.flag() ? in.pick(kTokens) : in.range(0, 64);
  a.shape.hidden_size = in.flag() ? in.pick(kSizes) : 8 * in.range(1, 8);
  a.shape.intermediate_size = in.flag() ? in.pick(kSizes) : 8 * in.range(1, 8);
  a.shape.num_experts = in.flag() ? in.pick(kSmall) : static_cast<int32_t>(in.range(1, 64));
  a.shape.top_k = in.flag() ? in.pick(kSmall) : static_cast<int32_t>(in.range(1, 8));
  a.shape.local_num_experts = in.flag() ? in.pick(kSmall) : a.shape.num_experts;
  a.shape.local_expert_offset = in.flag() ? in.pick(kSmall) : 0;
  a.weight_layout = static_cast<WeightLayout>(in.range(0, 8) == 0 ? in.pick(kEnums) : 0);
  a.expert_weights_dtype =
      static_cast<DType>(in.range(0, 4) == 0 ? in.pick(kEnums) : in.range(0, 1));
  a.hidden_states = pointer(8);
  a.gemm1_weights = pointer(8);
  a.gemm2_weights = pointer(8);
  a.logits.logits = pointer(1);
  a.logits.logits_dtype =
      static_cast<DType>(in.range(0, 4) == 0 ? in.pick(kEnums) : in.range(0, 1));
  a.logits.bias = pointer(2);
  a.logits.bias_dtype = static_cast<DType>(in.range(0, 4) == 0 ? in.pick(kEnums) : in.range(0, 1));
  a.logits.method =
      static_cast<RoutingMethod>(in.range(0, 4) == 0 ? in.pick(kEnums) : in.range(0, 9));
  a.logits.n_group = in.flag() ? in.pick(kSmall) : static_cast<int32_t>(in.range(0, 8));
  a.logits.topk_group = in.flag() ? in.pick(kSmall) : static_cast<int32_t>(in.range(0, 8));
  a.logits.routed_scaling_factor = in.pick(kScales);
  a.routed.topk_ids = static_cast<const int32_t*>(pointer(1));
  a.routed.topk_weights = pointer(1);
  a.routed.weights_dtype =
      static_cast<DType>(in.range(0, 4) == 0 ? in.pick(kEnums) : in.range(0, 1));
  a.do_finalize = in.flag();
  a.output = pointer(8);
  a.gemm2_output = pointer(8);
  a.expert_weights = pointer(8);
  a.expanded_idx_to_permuted_idx = static_cast<int32_t*>(pointer(8));
  a.routing_replay_out = static_cast<int16_t*>(pointer(1));
  if (in.range(0, 3) == 0) {  // the FP8 variant: mostly e4m3 weights on 128-multiple sizes
    const auto bf16_or_fp8 = [&] {
      return static_cast<DType>(in.range(0, 4) == 0 ? in.pick(kEnums) : 2 * in.range(0, 1));
    };
    a.weights_dtype = in.range(0, 3) == 0 ? bf16_or_fp8() : DType::kFP8E4M3;
    a.hidden_states_dtype = bf16_or_fp8();
    a.gemm1_weights_scale = static_cast<const float*>(pointer(6));
    a.gemm2_weights_scale = static_cast<const float*>(pointer(6));
    a.hidden_states_scale = static_cast<const float*>(pointer(1));
    if (in.range(0, 3) != 0) {
      a.shape.hidden_size = 128 * in.range(1, 4);
      a.shape.intermediate_size = in.range(0, 4) == 0 ? 8 * in.range(1, 32) : 128 * in.range(1, 4);
    }
  }

  const Status status = validate(a);
  const bool expected = expected_valid(a);
  FUZZ_CHECK(status.ok() == expected, "validate: " + status.message);
  if (!status.ok()) {
    FUZZ_CHECK(status.code == StatusCode::kInvalidArgument, status.message);
    const size_t expected_at = status.message.find(": expected ");
    FUZZ_CHECK(expected_at != std::string::npos && expected_at > 0, status.message);
    FUZZ_CHECK(status.message.find(", got ", expected_at) != std::string::npos, status.message);
    const Status ref = run_reference(a);  // rejects before touching any (dummy) pointer
    FUZZ_CHECK(ref.code == status.code && ref.message == status.message, ref.message);
  }
}

// ---- 2. run_reference() on small valid shapes with hostile routing ----------------------------

constexpr size_t kGuard = 64;  // elements of guard on each side of every output

template <typename T>
class Guarded {
 public:
  Guarded(size_t count, T poison)
      : buffer_(count + 2 * kGuard, poison), count_(count), poison_(poison) {}
  T* data() { return buffer_.data() + kGuard; }
  const T& operator[](size_t i) const { return buffer_[kGuard + i]; }
  size_t size() const { return count_; }
  void check_guards(const char* name) const {
    for (size_t i = 0; i < kGuard; ++i) {
      FUZZ_CHECK(std::memcmp(&buffer_[i], &poison_, sizeof(T)) == 0, name);
      FUZZ_CHECK(std::memcmp(&buffer_[kGuard + count_ + i], &poison_, sizeof(T)) == 0, name);
    }
  }
  bool untouched(size_t i) const { return std::memcmp(&(*this)[i], &poison_, sizeof(T)) == 0; }
  std::vector<T> contents() const {
    return std::vector<T>(buffer_.begin() + kGuard, buffer_.begin() + kGuard + count_);
  }

 private:
  std::vector<T> buffer_;
  size_t count_;
  T poison_;
};

uint16_t hostile_bf16(Bytes& in) {
  static const uint16_t kSpecial[] = {0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0x0000, 0x8000,
                                      0x0001, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80};
  return in.range(0, 3) == 0 ? in.pick(kSpecial) : static_cast<uint16_t>(in.bits(2));
}
float hostile_fp32(Bytes& in) {
  const int kind = static_cast<int>(in.range(0, 5));
  if (kind == 0) return detail::bf16_bits_to_float(hostile_bf16(in));
  if (kind == 1) {
    uint32_t raw = static_cast<uint32_t>(in.bits(4));
    float value;
    std::memcpy(&value, &raw, sizeof(value));
    return value;
  }
  return static_cast<float>(in.range(-4000, 4000)) / 1000.0f;  // ordinary logits
}

// e4m3 codes for the FP8 variant's tensors: mostly any byte, some NaN (0x7F, 0xFF), +-448,
// zeros and the smallest subnormal; from a generator seeded by the input (tensors of 10^5 bytes).
struct HostileE4m3 {
  std::mt19937 rng;
  uint8_t operator()() {
    static const uint8_t kSpecial[] = {0x7F, 0xFF, 0x7E, 0xFE, 0x00, 0x80, 0x01};
    const uint32_t r = rng();
    return (r & 0xF00u) == 0 ? kSpecial[r % 7] : static_cast<uint8_t>(r);
  }
};

void fuzz_reference(Bytes& in) {
  // One call in four takes the FP8 variant (H and I multiples of 128): hostile e4m3 weights and
  // block scales, bf16 or hostile e4m3 hidden states with hostile scales.
  const bool fp8 = in.range(0, 3) == 0;
  const bool fp8_input = fp8 && in.flag();
  const int64_t T = in.range(0, 6);
  const int64_t H = fp8 ? 128 * in.range(1, 2) : 8 * in.range(1, 3);
  const int64_t I = fp8 ? 128 : 8 * in.range(1, 2);
  const int32_t E = static_cast<int32_t>(in.range(1, 12));
  int32_t K = static_cast<int32_t>(in.range(1, std::min<int32_t>(E, 6)));
  const int32_t E_loc = static_cast<int32_t>(in.range(1, E));
  const int32_t offset = static_cast<int32_t>(in.range(0, E - E_loc));
  const int mode = static_cast<int>(in.range(0, 2));  // logits, packed, unpacked

  MoeArguments a;
  a.do_finalize = in.flag();
  LogitsRouting& l = a.logits;
  if (mode == 0) {
    l.method = static_cast<RoutingMethod>(in.range(0, 9));
    if (l.method == RoutingMethod::kLlama4) K = 1;
    if (l.method == RoutingMethod::kDeepSeekV3) {
      std::vector<int32_t> divisors;
      for (int32_t g = 1; g <= E; ++g)
        if (E % g == 0) divisors.push_back(g);
      l.n_group = in.flag() ? 0 : divisors[in.range(0, static_cast<int64_t>(divisors.size()) - 1)];
      const int32_t groups = l.n_group ? l.n_group : 1;
      l.topk_group = static_cast<int32_t>(in.range(0, groups));
      const int32_t kept = l.topk_group ? l.topk_group : groups;
      if (K > kept * (E / groups)) l.topk_group = 0;  // all groups: K <= E
    }
    l.logits_dtype = static_cast<DType>(in.range(0, 1));
    l.bias_dtype = static_cast<DType>(in.range(0, 1));
    static const float kScales[] = {1.0f, 2.5f, 0.0f, -1.0f, 1e30f};
    l.routed_scaling_factor = in.pick(kScales);
    a.expert_weights_dtype = static_cast<DType>(in.range(0, 1));
  }
  a.shape = {T, H, I, E, K, offset, E_loc};
  const int64_t slots = T * K;

  // Inputs: x and weights ordinary (bf16 in [-1, 1]); the routing is the hostile part.
  std::vector<uint16_t> x(std::max<int64_t>(T * H, 1)), w1(E_loc * 2 * I * H), w2(E_loc * H * I);
  for (auto* v : {&x, &w1, &w2}) {
    for (uint16_t& e : *v)
      e = detail::float_to_bf16_bits((static_cast<float>(in.range(0, 255)) - 128.0f) / 128.0f);
  }
  std::vector<float> logits_fp32, bias_fp32, weights_fp32;
  std::vector<uint16_t> logits_bf16, bias_bf16, weights_bf16;
  std::vector<int32_t> ids(std::max<int64_t>(slots, 1));
  if (mode == 0) {
    for (int64_t i = 0; i < T * E; ++i) {
      const float v = hostile_fp32(in);
      logits_fp32.push_back(v);
      logits_bf16.push_back(detail::float_to_bf16_bits(v));
    }
    logits_fp32.reserve(1);
    logits_bf16.reserve(1);
    l.logits = l.logits_dtype == DType::kFP32 ? static_cast<const void*>(logits_fp32.data())
                                              : static_cast<const void*>(logits_bf16.data());
    if (in.flag()) {
      for (int32_t e = 0; e < E; ++e) {
        const float v = hostile_fp32(in);
        bias_fp32.push_back(v);
        bias_bf16.push_back(detail::float_to_bf16_bits(v));
      }
      l.bias = l.bias_dtype == DType::kFP32 ? static_cast<const void*>(bias_fp32.data())
                                            : static_cast<const void*>(bias_bf16.data());
    }
  } else {
    for (int64_t i = 0; i < slots; ++i) {
      const int32_t id =
          in.flag() ? static_cast<int32_t>(in.range(-2, E + 1)) : static_cast<int32_t>(in.bits(4));
      ids[i] = mode == 1 ? pack_topk(id, hostile_bf16(in)) : id;
    }
    a.routed.topk_ids = ids.data();
    if (mode == 2) {
      a.routed.weights_dtype = static_cast<DType>(in.range(0, 1));
      a.expert_weights_dtype = a.routed.weights_dtype;
      weights_fp32.resize(std::max<int64_t>(slots, 1));
      weights_bf16.resize(std::max<int64_t>(slots, 1));
      for (int64_t i = 0; i < slots; ++i) {
        weights_bf16[i] = hostile_bf16(in);
        weights_fp32[i] = hostile_fp32(in);
      }
      a.routed.topk_weights = a.routed.weights_dtype == DType::kFP32
                                  ? static_cast<const void*>(weights_fp32.data())
                                  : static_cast<const void*>(weights_bf16.data());
    }
  }
  a.hidden_states = x.data();
  a.gemm1_weights = w1.data();
  a.gemm2_weights = w2.data();
  std::vector<uint8_t> x8, w18, w28;
  std::vector<float> x_scale, w1_scale, w2_scale;
  if (fp8) {
    HostileE4m3 code{std::mt19937(static_cast<uint32_t>(in.bits(4)))};
    w18.resize(w1.size());
    w28.resize(w2.size());
    for (auto* v : {&w18, &w28}) {
      for (uint8_t& c : *v) c = code();
    }
    w1_scale.resize(E_loc * (2 * I / 128) * (H / 128));
    w2_scale.resize(E_loc * (H / 128) * (I / 128));
    for (auto* v : {&w1_scale, &w2_scale}) {
      for (float& f : *v) f = hostile_fp32(in);
    }
    a.weights_dtype = DType::kFP8E4M3;
    a.gemm1_weights = w18.data();
    a.gemm2_weights = w28.data();
    a.gemm1_weights_scale = w1_scale.data();
    a.gemm2_weights_scale = w2_scale.data();
    if (fp8_input) {
      x8.resize(x.size());
      for (uint8_t& c : x8) c = code();
      x_scale.resize(std::max<int64_t>(T * (H / 128), 1));
      for (float& f : x_scale) f = hostile_fp32(in);
      a.hidden_states_dtype = DType::kFP8E4M3;
      a.hidden_states = x8.data();
      a.hidden_states_scale = x_scale.data();
    }
  }

  constexpr uint16_t kPoisonBf16 = 0xFFC1;  // a NaN the reference never writes (it canonicalises)
  Guarded<uint16_t> output(T * H, kPoisonBf16), rows(slots * H, kPoisonBf16);
  Guarded<uint32_t> weights_out(slots, 0xFFC0DEADu);  // wide enough for either dtype
  Guarded<int32_t> map(slots, 0x5A5A5A5A);
  Guarded<int16_t> replay(slots, 0x5A5A);
  const bool with_replay = in.flag();
  if (a.do_finalize) {
    a.output = output.data();
  } else {
    a.gemm2_output = rows.data();
    a.expert_weights = weights_out.data();
    a.expanded_idx_to_permuted_idx = map.data();
  }
  if (with_replay) a.routing_replay_out = replay.data();

  FUZZ_CHECK(expected_valid(a), "the harness built invalid arguments");
  const std::vector<uint16_t> x0 = x, w10 = w1, w20 = w2, lb0 = logits_bf16, bb0 = bias_bf16,
                              wb0 = weights_bf16;
  const std::vector<int32_t> ids0 = ids;
  const std::vector<float> lf0 = logits_fp32, bf0 = bias_fp32, wf0 = weights_fp32;
  const std::vector<uint8_t> x80 = x8, w180 = w18, w280 = w28;
  const std::vector<float> xs0 = x_scale, w1s0 = w1_scale, w2s0 = w2_scale;
  const auto same_bytes = [](const std::vector<float>& p, const std::vector<float>& q) {
    return p.size() == q.size() &&
           (p.empty() || std::memcmp(p.data(), q.data(), p.size() * 4) == 0);
  };
  const Status status = run_reference(a);
  FUZZ_CHECK(status.ok(), status.message);
  FUZZ_CHECK(x == x0 && w1 == w10 && w2 == w20 && logits_bf16 == lb0 && bias_bf16 == bb0 &&
                 weights_bf16 == wb0 && ids == ids0 && same_bytes(logits_fp32, lf0) &&
                 same_bytes(bias_fp32, bf0) && same_bytes(weights_fp32, wf0) && x8 == x80 &&
                 w18 == w180 && w28 == w280 && same_bytes(x_scale, xs0) &&
                 same_bytes(w1_scale, w1s0) && same_bytes(w2_scale, w2s0),
             "an input was written");
  output.check_guards("output");
  rows.check_guards("gemm2_output");
  weights_out.check_guards("expert_weights");
  map.check_guards("expanded_idx_to_permuted_idx");
  replay.check_guards("routing_replay_out");

  // The ids the call used: decoded routed ids, or the replayed selection.
  std::vector<int32_t> used(slots);
  for (int64_t i = 0; i < slots; ++i) {
    if (mode == 1) used[i] = unpack_topk_id(ids[i]);
    if (mode == 2) used[i] = ids[i];
    if (mode == 0) used[i] = with_replay ? replay[i] : -1;
  }
  if (with_replay) {
    for (int64_t i = 0; i < slots; ++i) {
      FUZZ_CHECK(replay[i] == static_cast<int16_t>(used[i]), "routing_replay_out");
      if (mode == 0) {
        FUZZ_CHECK(used[i] >= 0 && used[i] < E, "logits routing picked an invalid id");
        for (int64_t j = i - i % K; j < i; ++j) FUZZ_CHECK(used[j] != used[i], "repeated pick");
      }
    }
  }
  if (a.do_finalize) {
    for (size_t i = 0; i < output.size(); ++i)
      FUZZ_CHECK(!output.untouched(i), "output row unwritten");
  } else {
    int64_t num_local = 0;
    std::vector<bool> row_taken(slots, false);
    for (int64_t i = 0; i < slots; ++i) {
      const int32_t row = map[i];
      FUZZ_CHECK(row >= -1 && row < slots, "map out of range");
      if (mode != 0 || with_replay) {
        const bool local = used[i] >= offset && used[i] < offset + E_loc;
        FUZZ_CHECK((row >= 0) == local, "non-local iff outside the shard");
      }
      if (row < 0) continue;
      FUZZ_CHECK(!row_taken[row], "two slots share a row");
      row_taken[row] = true;
      ++num_local;
    }
    for (int64_t i = 0; i < num_local * H; ++i) FUZZ_CHECK(!rows.untouched(i), "row unwritten");
    for (int64_t i = 0; i < slots; ++i) {
      uint32_t given = 0, got = 0;
      if (a.expert_weights_dtype == DType::kBF16) {
        uint16_t half;
        std::memcpy(&half, reinterpret_cast<const uint16_t*>(weights_out.data()) + i, 2);
        got = half;
        if (mode == 1) given = unpack_topk_weight_bits(ids[i]);
        if (mode == 2) given = weights_bf16[i];
      } else {
        std::memcpy(&got, reinterpret_cast<const float*>(weights_out.data()) + i, 4);
        if (mode == 2) std::memcpy(&given, &weights_fp32[i], 4);
      }
      if (mode != 0) FUZZ_CHECK(got == given, "routed weight not returned bit for bit");
    }
    // bf16 weights fill half the [slots] uint32 table: the rest must stay poisoned.
    if (a.expert_weights_dtype == DType::kBF16) {
      const auto* halves = reinterpret_cast<const uint16_t*>(weights_out.data());
      for (int64_t i = slots; i < 2 * slots; ++i) {
        FUZZ_CHECK(halves[i] == (i % 2 ? 0xFFC0 : 0xDEAD), "expert_weights overrun");
      }
    }
  }
  if (mode != 0) {
    RoutingCheck check;
    FUZZ_CHECK(validate_routing_host(ids.data(), T, K, E, mode == 1, &check).ok(), "");
    int64_t first_bad = -1;
    for (int64_t i = 0; i < slots && first_bad < 0; ++i) {
      if (used[i] < 0 || used[i] >= E) first_bad = i;
    }
    FUZZ_CHECK(check.first_bad_slot == first_bad, "validate_routing_host");
    if (first_bad >= 0) FUZZ_CHECK(check.bad_id == used[first_bad], "validate_routing_host id");
  }

  // Determinism: the same call again gives the same bits.
  const std::vector<uint16_t> out1 = output.contents(), rows1 = rows.contents();
  const std::vector<int32_t> map1 = map.contents();
  FUZZ_CHECK(run_reference(a).ok(), "");
  FUZZ_CHECK(output.contents() == out1 && rows.contents() == rows1 && map.contents() == map1,
             "run_reference is not deterministic");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  if (in.flag()) {
    fuzz_validate(in);
  } else {
    fuzz_reference(in);
  }
  return 0;
}

#ifdef FUSEDMOE_FUZZ_STANDALONE
// Driver without libFuzzer: seeded random inputs of random length for a time budget.
//   fuzz_moe [-max_total_time=SECONDS] [-seed=N]    (the libFuzzer flag spellings)
#include <chrono>

int main(int argc, char** argv) {
  double seconds = 20;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "-max_total_time=", 16) == 0) seconds = std::atof(argv[i] + 16);
    if (std::strncmp(argv[i], "-seed=", 6) == 0) seed = std::strtoull(argv[i] + 6, nullptr, 10);
  }
  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  uint64_t runs = 0;
  std::vector<uint8_t> input;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
         seconds) {
    input.resize(rng() % 2048);
    for (uint8_t& b : input) b = static_cast<uint8_t>(rng());
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
  }
  std::printf("fuzz_moe (standalone driver, seed %llu): %llu inputs in %.0f s, no failure\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(runs),
              seconds);
  return 0;
}
#endif
