// Hostile inputs on the CPU side (issue 7): the reference and the argument checks, each case with
// the behaviour SPEC and docs/reliability.md promise.
//   ids:     negative, >= E, 32767, -32768 (packed), INT32_MIN/MAX and ids whose low 16 bits are
//            local (unpacked), valid-but-remote ids, duplicates within a token, all non-local
//   weights: NaN (with payload), +-inf, negative, +-0, on local and non-local slots
//   logits:  whole rows of NaN, -inf and +inf, a single +inf, scattered NaN, every method/dtype
//   shapes:  T = 0 with live output pointers
//   rules:   every validation rule through validate(), run() (host pointers: rejected before any
//            CUDA call), run_reference() and workspace_size(); nothing written, not even workspace
// Outputs are poisoned before every call; inputs are checksummed and must not change.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/host_data.h"
#include "common/invalid_arguments.h"
#include "common/moe_case.h"
#include "common/tolerance.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace {

using test::MoeCase;
using test::MoeCaseConfig;
using test::RoutingInput;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

MoeCaseConfig routed_config(int64_t T, int64_t H, int64_t I, int32_t E, int32_t K,
                            RoutingInput input, DType weights_dtype, uint64_t seed) {
  MoeCaseConfig cfg;
  cfg.shape = test::make_shape(T, H, I, E, K);
  cfg.routing_input = input;
  cfg.routed_weights_dtype = weights_dtype;
  cfg.with_replay = true;
  cfg.seed = seed;
  return cfg;
}

struct Encoding {
  const char* name;
  RoutingInput input;
  DType weights_dtype;
};
const Encoding kEncodings[] = {{"packed", RoutingInput::kPacked, DType::kBF16},
                               {"unpacked_bf16", RoutingInput::kUnpacked, DType::kBF16},
                               {"unpacked_fp32", RoutingInput::kUnpacked, DType::kFP32}};

// routed_config for one encoding on the shard [offset, offset + local), in either output mode.
MoeCaseConfig shard_config(int64_t T, int64_t H, int64_t I, int32_t E, int32_t K,
                           const Encoding& enc, bool finalize, uint64_t seed, int32_t offset,
                           int32_t local) {
  MoeCaseConfig cfg = routed_config(T, H, I, E, K, enc.input, enc.weights_dtype, seed);
  cfg.shape.local_expert_offset = offset;
  cfg.shape.local_num_experts = local;
  cfg.do_finalize = finalize;
  return cfg;
}

// run_reference on the case; inputs must come back unchanged.
void run_checked(MoeCase& c) {
  const uint64_t inputs = c.input_checksum();
  const Status status = run_reference(c.arguments());
  ASSERT_TRUE(status.ok()) << status.message;
  ASSERT_EQ(c.input_checksum(), inputs) << "run_reference wrote into an input";
}

// Overwrites the weight of one slot with raw bf16 bits (keeping NaN payloads that set_routing's
// fp32 -> bf16 conversion would make canonical); fp32 input gets the same value widened.
void set_weight_bits(MoeCase& c, int64_t slot, uint16_t bits) {
  if (c.config().routing_input == RoutingInput::kPacked) {
    c.topk_ids[slot] = pack_topk(unpack_topk_id(c.topk_ids[slot]), bits);
  } else if (c.config().routed_weights_dtype == DType::kBF16) {
    c.topk_weights_bf16[slot] = bits;
  } else {
    c.topk_weights_fp32[slot] = test::fp32_from_bits(static_cast<uint32_t>(bits) << 16);
  }
}

// The given weight of a slot, as raw bits of its dtype (bf16 in the low half, or fp32).
uint32_t given_weight_bits(const MoeCase& c, int64_t slot) {
  if (c.config().routing_input == RoutingInput::kPacked) {
    return unpack_topk_weight_bits(c.topk_ids[slot]);
  }
  if (c.config().routed_weights_dtype == DType::kBF16) return c.topk_weights_bf16[slot];
  uint32_t bits;
  std::memcpy(&bits, &c.topk_weights_fp32[slot], sizeof(bits));
  return bits;
}
uint32_t returned_weight_bits(const MoeCase& c, int64_t slot) {
  if (c.expert_weights_dtype() == DType::kBF16) return c.expert_weights_bf16[slot];
  uint32_t bits;
  std::memcpy(&bits, &c.expert_weights_fp32[slot], sizeof(bits));
  return bits;
}

std::vector<float> row_of(const MoeCase& c, int64_t t) {
  const int64_t H = c.shape().hidden_size;
  std::vector<float> row(H);
  for (int64_t h = 0; h < H; ++h) row[h] = test::bf16_bits_to_float(c.output[t * H + h]);
  return row;
}

// ================================================================================================
// Expert ids
// ================================================================================================

// Ids outside [0, E) and valid ids outside the shard are non-local in every encoding: the output
// equals that of the same routing with those ids replaced by a plain remote id, bitwise; the map
// says -1; the weights come back as given; routing_replay_out holds int16(id).
TEST(HostileIds, OutOfRangeIdsAreNonLocalInEveryEncoding) {
  constexpr int64_t T = 23, H = 32, I = 16;
  constexpr int32_t E = 16, K = 4, kOffset = 4, kLocal = 8;
  const std::vector<int32_t> packed_hostile = {-1,          -32768,           32767, E,
                                               kOffset - 1, kOffset + kLocal, -5,    1000};
  const std::vector<int32_t> unpacked_hostile = {std::numeric_limits<int32_t>::min(),
                                                 std::numeric_limits<int32_t>::max(),
                                                 65536 + kOffset + 1,  // int16 would be local
                                                 -65536 + kOffset + 2,
                                                 E,
                                                 -1,
                                                 kOffset - 1,
                                                 kOffset + kLocal};
  uint64_t seed = 100;
  for (const Encoding& enc : kEncodings) {
    for (const bool finalize : {true, false}) {
      SCOPED_TRACE(std::string(enc.name) + (finalize ? " finalize" : " triple"));
      const MoeCaseConfig cfg = shard_config(T, H, I, E, K, enc, finalize, ++seed, kOffset, kLocal);
      MoeCase hostile(cfg), clean(cfg);  // same seed: same x, W1, W2

      test::Rng rng(seed);
      std::vector<int32_t> ids = test::random_distinct_ids(rng, T, K, E);
      const std::vector<float> weights = test::random_fp32(rng, T * K, -1.0f, 1.0f);
      std::vector<int32_t> clean_ids = ids;
      const std::vector<int32_t>& bad =
          enc.input == RoutingInput::kPacked ? packed_hostile : unpacked_hostile;
      std::vector<int64_t> bad_slots;
      for (size_t i = 0; i < bad.size(); ++i) {
        const int64_t slot = 5 + 11 * static_cast<int64_t>(i);  // spread over tokens and k
        ids[slot] = bad[i];
        clean_ids[slot] = 0;  // valid, remote
        bad_slots.push_back(slot);
      }
      hostile.set_routing(ids, weights);
      clean.set_routing(clean_ids, weights);
      run_checked(hostile);
      run_checked(clean);

      if (finalize) {
        EXPECT_EQ(test::first_difference(hostile.output, clean.output), -1);
        for (uint16_t v : hostile.output) ASSERT_FALSE(test::is_poison_bf16(v));
      } else {
        EXPECT_EQ(test::first_difference(hostile.expanded_idx_to_permuted_idx,
                                         clean.expanded_idx_to_permuted_idx),
                  -1);
        for (int64_t slot : bad_slots) EXPECT_EQ(hostile.expanded_idx_to_permuted_idx[slot], -1);
        EXPECT_EQ(test::first_difference(hostile.gemm2_output, clean.gemm2_output), -1);
        for (int64_t slot = 0; slot < T * K; ++slot) {
          ASSERT_EQ(returned_weight_bits(hostile, slot), given_weight_bits(hostile, slot))
              << "slot " << slot;
        }
      }
      for (int64_t slot = 0; slot < T * K; ++slot) {
        ASSERT_EQ(hostile.routing_replay_out[slot], static_cast<int16_t>(ids[slot]));
      }

      // The debugging helper reports the first id outside [0, E) (remote but valid ids are fine).
      RoutingCheck check;
      ASSERT_TRUE(validate_routing_host(hostile.topk_ids.data(), T, K, E,
                                        enc.input == RoutingInput::kPacked, &check)
                      .ok());
      EXPECT_EQ(check.first_bad_slot, bad_slots[0]);
      EXPECT_EQ(check.bad_id, bad[0]);
    }
  }
}

// A duplicated id counts once per slot: each slot gets its own permuted row (equal rows for the
// same token and expert), and the output is the fma chain over all of them in ascending k.
TEST(HostileIds, DuplicateIdsCountEachSlot) {
  constexpr int64_t T = 9, H = 32, I = 16;
  constexpr int32_t E = 8, K = 4;
  MoeCaseConfig cfg = routed_config(T, H, I, E, K, RoutingInput::kUnpacked, DType::kFP32, 200);
  cfg.do_finalize = false;
  MoeCase triple(cfg);
  cfg.do_finalize = true;
  MoeCase finalized(cfg);
  test::Rng rng(201);
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t a = rng.integer(0, E - 1), b = (a + 1 + rng.integer(0, E - 2)) % E;
    const std::vector<int32_t> row = t % 3 == 0   ? std::vector<int32_t>{a, a, a, a}
                                     : t % 3 == 1 ? std::vector<int32_t>{a, b, a, b}
                                                  : std::vector<int32_t>{b, a, a, b};
    ids.insert(ids.end(), row.begin(), row.end());
  }
  const std::vector<float> weights = test::random_fp32(rng, T * K, 0.05f, 1.0f);
  triple.set_routing(ids, weights);
  finalized.set_routing(ids, weights);
  run_checked(triple);
  run_checked(finalized);

  const std::vector<int32_t>& map = triple.expanded_idx_to_permuted_idx;
  std::vector<bool> row_used(T * K, false);
  for (int64_t slot = 0; slot < T * K; ++slot) {
    ASSERT_GE(map[slot], 0);
    ASSERT_LT(map[slot], T * K);
    ASSERT_FALSE(row_used[map[slot]]) << "two slots share row " << map[slot];
    row_used[map[slot]] = true;
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      for (int j = k + 1; j < K; ++j) {
        if (ids[t * K + k] != ids[t * K + j]) continue;
        const uint16_t* a = triple.gemm2_output.data() + map[t * K + k] * H;
        const uint16_t* b = triple.gemm2_output.data() + map[t * K + j] * H;
        EXPECT_TRUE(std::equal(a, a + H, b)) << "token " << t << " slots " << k << ", " << j;
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) {
        acc = std::fma(weights[t * K + k],
                       test::bf16_bits_to_float(triple.gemm2_output[map[t * K + k] * H + h]), acc);
      }
      ASSERT_EQ(finalized.output[t * H + h], test::float_to_bf16_bits(acc))
          << "token " << t << " column " << h;
    }
  }
}

// Every slot remote (ids in other shards and outside [0, E)): zero rows (+0 bits), map all -1,
// weights as given, gemm2_output untouched (P = 0 rows are named).
TEST(HostileIds, AllSlotsNonLocal) {
  constexpr int64_t T = 19, H = 24, I = 16;
  constexpr int32_t E = 16, K = 3, kOffset = 8, kLocal = 4;
  uint64_t seed = 300;
  for (const Encoding& enc : kEncodings) {
    for (const bool finalize : {true, false}) {
      SCOPED_TRACE(std::string(enc.name) + (finalize ? " finalize" : " triple"));
      const MoeCaseConfig cfg = shard_config(T, H, I, E, K, enc, finalize, ++seed, kOffset, kLocal);
      MoeCase c(cfg);
      test::Rng rng(seed);
      std::vector<int32_t> ids(T * K);
      const int32_t remote[] = {0, 7, 12, 15, -1, 16, 32767, -32768};
      for (int32_t& id : ids) id = remote[rng.integer(0, 7)];
      c.set_routing(ids, test::random_fp32(rng, T * K, -2.0f, 2.0f));
      run_checked(c);
      if (finalize) {
        for (uint16_t v : c.output) ASSERT_EQ(v, 0x0000);
      } else {
        for (int32_t row : c.expanded_idx_to_permuted_idx) ASSERT_EQ(row, -1);
        for (uint16_t v : c.gemm2_output) ASSERT_EQ(v, test::kPoisonBf16);
        for (int64_t slot = 0; slot < T * K; ++slot) {
          ASSERT_EQ(returned_weight_bits(c, slot), given_weight_bits(c, slot));
        }
      }
    }
  }
}

// ================================================================================================
// Routing weights (routed input: used exactly as given)
// ================================================================================================

// Local slots: NaN makes the token's row NaN, +-inf makes it non-finite, 0 adds nothing, a
// negative weight negates; non-local slots contribute nothing whatever their weight. Compared
// with an "equivalent" routing of the same data: bitwise, or as values where only the sign of
// a zero can differ (fma(0, y, acc) and fma(-w, y, 0)).
TEST(HostileWeights, NaNInfinityZeroAndNegativeWeights) {
  constexpr int64_t T = 12, H = 32, I = 16;
  constexpr int32_t E = 8, K = 3, kOffset = 2, kLocal = 4;
  constexpr uint16_t kNaNPayload = 0xFFC1;  // a negative NaN with a payload
  uint64_t seed = 400;
  for (const Encoding& enc : kEncodings) {
    for (const bool finalize : {true, false}) {
      SCOPED_TRACE(std::string(enc.name) + (finalize ? " finalize" : " triple"));
      const MoeCaseConfig cfg = shard_config(T, H, I, E, K, enc, finalize, ++seed, kOffset, kLocal);
      MoeCase hostile(cfg), equivalent(cfg);

      test::Rng rng(seed);
      std::vector<int32_t> ids;
      for (int64_t t = 0; t < T; ++t) {  // slots 0, 1 local (distinct), slot 2 remote
        ids.push_back(kOffset + static_cast<int32_t>(t % kLocal));
        ids.push_back(kOffset + static_cast<int32_t>((t + 1) % kLocal));
        ids.push_back(t % 2 ? 0 : 7);
      }
      std::vector<float> w = test::random_fp32(rng, T * K, 0.05f, 1.0f);
      for (float& v : w) v = test::round_to_bf16(v);  // so both dtypes carry the same values
      std::vector<float> w_eq = w;
      std::vector<int32_t> ids_eq = ids;
      w[0 * K + 1] = kNaN;                 // token 0: NaN on a local slot
      w[1 * K + 0] = kInf;                 // token 1: +inf
      w[2 * K + 1] = -kInf;                // token 2: -inf
      w[3 * K + 0] = w[3 * K + 1] = 0.0f;  // token 3: zeros everywhere
      w[3 * K + 2] = -0.0f;
      w[4 * K + 2] = kNaN;  // token 4: NaN on the remote slot
      for (int k = 0; k < K; ++k) w[5 * K + k] = -w_eq[5 * K + k];  // token 5: all negated
      w[6 * K + 1] = 0.0f;                                          // token 6: one local zero ...
      ids_eq[6 * K + 1] = 0;                                        // ... is the slot made remote
      w[7 * K + 0] = -0.0f;                                         // token 7: -0 likewise
      ids_eq[7 * K + 0] = 7;
      w[9 * K + 2] = -kInf;  // token 9: -inf on the remote slot
      hostile.set_routing(ids, w);
      equivalent.set_routing(ids_eq, w_eq);
      set_weight_bits(hostile, 8 * K + 0, kNaNPayload);  // token 8: a NaN with payload, local
      run_checked(hostile);
      run_checked(equivalent);

      if (!finalize) {
        // Weights come back bit for bit (NaN payloads too); rows are unweighted, so finite.
        for (int64_t slot = 0; slot < T * K; ++slot) {
          ASSERT_EQ(returned_weight_bits(hostile, slot), given_weight_bits(hostile, slot))
              << "slot " << slot;
        }
        const int64_t num_local = 2 * T;
        for (int64_t i = 0; i < num_local * H; ++i) {
          ASSERT_TRUE(std::isfinite(test::bf16_bits_to_float(hostile.gemm2_output[i])));
        }
        // A slot local in both routings has the same unweighted row.
        for (int64_t slot = 0; slot < T * K; ++slot) {
          const int32_t a = hostile.expanded_idx_to_permuted_idx[slot];
          const int32_t b = equivalent.expanded_idx_to_permuted_idx[slot];
          ASSERT_EQ(a >= 0, ids[slot] >= kOffset && ids[slot] < kOffset + kLocal);
          if (a < 0 || b < 0) continue;
          const uint16_t* row_a = hostile.gemm2_output.data() + a * H;
          const uint16_t* row_b = equivalent.gemm2_output.data() + b * H;
          ASSERT_TRUE(std::equal(row_a, row_a + H, row_b)) << "slot " << slot;
        }
        continue;
      }
      for (int64_t t : {0, 8}) {
        for (float v : row_of(hostile, t)) ASSERT_TRUE(std::isnan(v)) << "token " << t;
      }
      for (int64_t t : {1, 2}) {
        for (float v : row_of(hostile, t)) ASSERT_FALSE(std::isfinite(v)) << "token " << t;
      }
      for (float v : row_of(hostile, 3)) ASSERT_EQ(v, 0.0f) << "token 3";
      const std::vector<float> neg = row_of(hostile, 5), pos = row_of(equivalent, 5);
      for (int64_t h = 0; h < H; ++h) ASSERT_EQ(neg[h], -pos[h]) << "token 5";
      for (int64_t t : {6, 7}) EXPECT_EQ(row_of(hostile, t), row_of(equivalent, t)) << t;
      for (int64_t t : {4, 9, 10, 11}) {  // remote hostile weights, or nothing hostile
        for (int64_t h = 0; h < H; ++h) {
          ASSERT_EQ(hostile.output[t * H + h], equivalent.output[t * H + h]) << "token " << t;
        }
      }
    }
  }
}

// ================================================================================================
// Logits
// ================================================================================================

// Rows of the hostile logits matrix (E = 16).
enum Row {
  kNormal,
  kAllNaN,
  kAllMinusInf,
  kAllPlusInf,
  kOnePlusInf,
  kSomeNaN,
  kSomeMinusInf,
  kNumRows
};
constexpr int32_t kPlusInfExpert = 11;

std::vector<float> hostile_logits(int32_t E, uint64_t seed) {
  test::Rng rng(seed);
  std::vector<float> logits = test::random_fp32(rng, kNumRows * E, -4.0f, 4.0f);
  for (int32_t e = 0; e < E; ++e) {
    logits[kAllNaN * E + e] = kNaN;
    logits[kAllMinusInf * E + e] = -kInf;
    logits[kAllPlusInf * E + e] = kInf;
  }
  logits[kOnePlusInf * E + kPlusInfExpert] = kInf;
  for (int32_t e : {1, 6, 13}) logits[kSomeNaN * E + e] = kNaN;
  for (int32_t e : {0, 9}) logits[kSomeMinusInf * E + e] = -kInf;
  return logits;
}

enum class W { kNaN, kZero, kQuarter, kOne, kPlusInf, kMinusInf };

bool weight_is(float w, W expected) {
  switch (expected) {
    case W::kNaN:
      return std::isnan(w);
    case W::kZero:
      return w == 0.0f;
    case W::kQuarter:
      return w == 0.25f;
    case W::kOne:
      return w == 1.0f;
    case W::kPlusInf:
      return w == kInf;
    case W::kMinusInf:
      return w == -kInf;
  }
  return false;
}

struct MethodCase {
  RoutingMethod method;
  int32_t n_group;                         // DeepSeekV3 only
  W all_nan, all_minus_inf, all_plus_inf;  // the K weights of those rows (K = 4; Llama4 K = 1)
  bool one_inf_first;                      // the +inf expert is the first pick
  bool one_inf_nan;                        // ... and the row's weights are NaN
};

// Hand-derived from SPEC's formulas (scale 1, no bias): softmax over a row holding +inf or only
// -inf is NaN (inf - inf, exp(NaN)); sigmoid(-inf) = 0, sigmoid(+inf) = 1; s / sum s with all s
// zero is 0/0; the scaled methods' + 1e-20 keeps 0 / (0 + 1e-20) = 0. All-NaN or all-equal
// scores select experts 0..K-1 (ties to the lowest index), except grouped DeepSeekV3 with NaN:
// the excluded groups' experts score -inf, which ranks above NaN, so they are picked (8..11).
const MethodCase kMethodCases[] = {
    {RoutingMethod::kDefault, 0, W::kNaN, W::kNaN, W::kNaN, false, true},
    {RoutingMethod::kRenormalize, 0, W::kNaN, W::kNaN, W::kNaN, true, true},
    {RoutingMethod::kDeepSeekV3, 0, W::kNaN, W::kZero, W::kQuarter, true, false},
    {RoutingMethod::kDeepSeekV3, 4, W::kNaN, W::kZero, W::kQuarter, false, false},
    {RoutingMethod::kLlama4, 0, W::kNaN, W::kZero, W::kOne, true, false},
    {RoutingMethod::kRenormalizeNaive, 0, W::kNaN, W::kNaN, W::kNaN, false, true},
    {RoutingMethod::kTopK, 0, W::kNaN, W::kMinusInf, W::kPlusInf, true, false},
    {RoutingMethod::kSigmoidRenorm, 0, W::kNaN, W::kNaN, W::kQuarter, true, false},
    {RoutingMethod::kMiniMax2, 0, W::kNaN, W::kZero, W::kQuarter, true, false},
    {RoutingMethod::kSigmoid, 0, W::kNaN, W::kZero, W::kOne, true, false},
    {RoutingMethod::kTopKSigmoid, 0, W::kNaN, W::kZero, W::kOne, true, false},
};

TEST(HostileLogits, WholeRowsOfNaNAndInfinityEveryMethodAndDtype) {
  constexpr int32_t E = 16;
  uint64_t seed = 500;
  for (const MethodCase& mc : kMethodCases) {
    for (const DType logits_dtype : {DType::kFP32, DType::kBF16}) {
      const int32_t K = mc.method == RoutingMethod::kLlama4 ? 1 : 4;
      SCOPED_TRACE(std::string(routing_method_name(mc.method)) + " n_group " +
                   std::to_string(mc.n_group) + " " + dtype_name(logits_dtype));
      const std::vector<float> logits_fp32 = hostile_logits(E, ++seed);
      const std::vector<uint16_t> logits_bf16 = test::float_to_bf16(logits_fp32);
      LogitsRouting logits;
      logits.logits = logits_dtype == DType::kFP32 ? static_cast<const void*>(logits_fp32.data())
                                                   : static_cast<const void*>(logits_bf16.data());
      logits.logits_dtype = logits_dtype;
      logits.method = mc.method;
      logits.n_group = mc.n_group;
      logits.topk_group = mc.n_group ? 2 : 0;
      const ref::Routing r = ref::route_reference(logits, kNumRows, E, K, DType::kFP32);

      auto ids_of = [&](int row) {
        return std::vector<int32_t>(r.ids.begin() + row * K, r.ids.begin() + (row + 1) * K);
      };
      auto weights_are = [&](int row, W expected) {
        for (int k = 0; k < K; ++k) {
          if (!weight_is(r.weights[row * K + k], expected)) return false;
        }
        return true;
      };
      std::vector<int32_t> first_k(K);
      for (int k = 0; k < K; ++k) first_k[k] = k;
      std::vector<int32_t> nan_ids = first_k;
      if (mc.n_group > 1) nan_ids = {8, 9, 10, 11};

      // Ids are always valid and distinct.
      for (int row = 0; row < kNumRows; ++row) {
        const std::vector<int32_t> ids = ids_of(row);
        for (int k = 0; k < K; ++k) {
          ASSERT_GE(ids[k], 0);
          ASSERT_LT(ids[k], E);
          for (int j = 0; j < k; ++j) ASSERT_NE(ids[j], ids[k]) << "row " << row;
        }
      }
      EXPECT_EQ(ids_of(kAllNaN), nan_ids);
      EXPECT_TRUE(weights_are(kAllNaN, mc.all_nan));
      EXPECT_EQ(ids_of(kAllMinusInf), first_k);
      EXPECT_TRUE(weights_are(kAllMinusInf, mc.all_minus_inf));
      EXPECT_EQ(ids_of(kAllPlusInf), first_k);
      EXPECT_TRUE(weights_are(kAllPlusInf, mc.all_plus_inf));
      if (mc.one_inf_first) EXPECT_EQ(ids_of(kOnePlusInf)[0], kPlusInfExpert);
      if (mc.one_inf_nan) {
        EXPECT_TRUE(weights_are(kOnePlusInf, W::kNaN));
      } else {
        for (int k = 0; k < K; ++k) EXPECT_FALSE(std::isnan(r.weights[kOnePlusInf * K + k]));
      }
      // Scattered NaN logits: softmax-over-all methods give NaN weights (a NaN term in the sum);
      // every other method never picks a NaN-logit expert while numbers remain.
      const bool softmax_all =
          mc.method == RoutingMethod::kDefault || mc.method == RoutingMethod::kRenormalizeNaive;
      for (int k = 0; k < K; ++k) {
        const float w = r.weights[kSomeNaN * K + k];
        EXPECT_EQ(std::isnan(w), softmax_all) << "k " << k;
        if (!softmax_all && mc.n_group <= 1) {
          EXPECT_FALSE(std::isnan(logits_fp32[kSomeNaN * E + r.ids[kSomeNaN * K + k]]));
        }
      }

      // The whole operator on these logits: a NaN weight on a local slot makes the row NaN,
      // an infinite one non-finite, all-zero weights a zero row; everything else is finite.
      MoeCaseConfig cfg;
      cfg.shape = test::make_shape(kNumRows, 32, 16, E, K);
      cfg.method = mc.method;
      cfg.n_group = mc.n_group;
      cfg.topk_group = mc.n_group ? 2 : 0;
      cfg.logits_dtype = logits_dtype;
      cfg.expert_weights_dtype = DType::kFP32;
      cfg.seed = seed;
      MoeCase c(cfg);
      if (logits_dtype == DType::kFP32) {
        c.logits_fp32 = logits_fp32;
      } else {
        c.logits_bf16 = logits_bf16;
      }
      run_checked(c);
      for (int row = 0; row < kNumRows; ++row) {
        bool any_nan = false, any_inf = false, all_zero = true;
        for (int k = 0; k < K; ++k) {
          const float w = r.weights[row * K + k];
          any_nan |= std::isnan(w);
          any_inf |= std::isinf(w);
          all_zero &= w == 0.0f;
        }
        for (float v : row_of(c, row)) {
          if (any_nan) {
            ASSERT_TRUE(std::isnan(v)) << "row " << row;
          } else if (any_inf) {
            ASSERT_FALSE(std::isfinite(v)) << "row " << row;
          } else if (all_zero) {
            ASSERT_EQ(v, 0.0f) << "row " << row;
          } else {
            ASSERT_TRUE(std::isfinite(v)) << "row " << row;
          }
        }
      }
    }
  }
}

// ================================================================================================
// Shapes and argument checks
// ================================================================================================

// T = 0 with live (poisoned) output pointers: every entry point succeeds and writes nothing.
TEST(HostileShapes, ZeroTokensWritesNothing) {
  uint64_t seed = 600;
  for (const RoutingInput input :
       {RoutingInput::kLogits, RoutingInput::kPacked, RoutingInput::kUnpacked}) {
    for (const bool finalize : {true, false}) {
      MoeCaseConfig cfg;
      cfg.shape = test::make_shape(0, 64, 32, 8, 2);
      cfg.routing_input = input;
      cfg.do_finalize = finalize;
      cfg.seed = ++seed;
      MoeCase c(cfg);
      std::vector<uint16_t> out(64), rows(64), weights(64);
      std::vector<int32_t> map(64);
      std::vector<int16_t> replay(64);
      std::vector<uint8_t> workspace(256, 0xA5);
      test::poison(out);
      test::poison(rows);
      test::poison(weights);
      test::poison(map);
      test::poison(replay);
      MoeArguments args = c.arguments();
      args.expert_weights_dtype = DType::kBF16;
      if (input == RoutingInput::kUnpacked) args.routed.weights_dtype = DType::kBF16;
      args.output = out.data();
      if (!finalize) {
        args.gemm2_output = rows.data();
        args.expert_weights = weights.data();
        args.expanded_idx_to_permuted_idx = map.data();
      }
      args.routing_replay_out = replay.data();
      const uint64_t before = test::checksum(out) ^ test::checksum(rows) ^ test::checksum(weights) ^
                              test::checksum(map) ^ test::checksum(replay);
      size_t bytes = 1;
      ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
      EXPECT_LE(bytes, 4096u) << "T = 0 needs only the per-expert tables";
      EXPECT_TRUE(validate(args).ok());
      EXPECT_TRUE(run_reference(args).ok());
      // run() with T = 0 returns before touching the device (no CUDA call on this machine).
      EXPECT_TRUE(run(args, workspace.data(), bytes, nullptr).ok());
      EXPECT_TRUE(run(args, nullptr, bytes, nullptr).ok());
      EXPECT_TRUE(run(args, nullptr, 0, nullptr).ok()) << "T = 0 needs no workspace at all";
      const uint64_t after = test::checksum(out) ^ test::checksum(rows) ^ test::checksum(weights) ^
                             test::checksum(map) ^ test::checksum(replay);
      EXPECT_EQ(after, before);
      for (uint8_t b : workspace) ASSERT_EQ(b, 0xA5);
    }
  }
}

// Every rule of the shared table through every entry point: the same status and message from
// validate(), run() and run_reference() (workspace_size() too for shape rules), and nothing
// written: outputs, inputs and the workspace keep their bytes. run() gets host pointers, which
// is safe exactly because a rejected call never reaches the device.
TEST(HostileValidation, EveryRuleRejectsAtEveryEntryPointAndWritesNothing) {
  uint64_t seed = 700;
  for (const test::InvalidRule& rule : test::invalid_rules()) {
    SCOPED_TRACE(rule.name);
    MoeCase c(test::invalid_base_config(rule.base, ++seed));
    MoeArguments args = c.arguments();
    ASSERT_TRUE(validate(args).ok()) << "base must be valid: " << validate(args).message;
    rule.mutate(args);
    const uint64_t inputs = c.input_checksum(), outputs = c.output_checksum();
    std::vector<uint8_t> workspace(1 << 16, 0xA5);

    const Status status = validate(args);
    EXPECT_TRUE(test::is_rejection(status, rule));
    const Status run_status = run(args, workspace.data(), workspace.size(), nullptr);
    EXPECT_EQ(run_status.code, status.code);
    EXPECT_EQ(run_status.message, status.message);
    const Status ref_status = run_reference(args);
    EXPECT_EQ(ref_status.code, status.code);
    EXPECT_EQ(ref_status.message, status.message);
    size_t bytes = 12345;
    const Status ws_status = workspace_size(args.shape, &bytes);
    if (rule.shape_rule) {
      EXPECT_EQ(ws_status.message, status.message);
      EXPECT_EQ(bytes, 12345u) << "a rejected size query wrote its result";
    } else {
      EXPECT_TRUE(ws_status.ok()) << ws_status.message;
    }
    EXPECT_EQ(c.output_checksum(), outputs) << "a rejected call wrote an output";
    EXPECT_EQ(c.input_checksum(), inputs) << "an input was written";
    for (uint8_t b : workspace) ASSERT_EQ(b, 0xA5) << "a rejected call wrote the workspace";
  }
}

// run()'s own checks, after validate(): the workspace size and pointer; workspace_size()'s
// result pointer. Rejected before the device is touched, nothing written.
TEST(HostileValidation, RunChecksTheWorkspace) {
  MoeCase c(test::invalid_base_config(test::InvalidBase::kPacked, 800));
  const MoeArguments args = c.arguments();
  const uint64_t outputs = c.output_checksum();
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
  ASSERT_GT(bytes, 0u);
  std::vector<uint8_t> workspace(bytes + 16, 0xA5);  // + 16: room for the misaligned start below

  const Status small = run(args, workspace.data(), bytes - 1, nullptr);
  EXPECT_EQ(small.code, StatusCode::kWorkspaceTooSmall);
  EXPECT_EQ(small.message.rfind("workspace_bytes: expected >= " + std::to_string(bytes), 0), 0u)
      << small.message;
  const Status zero = run(args, workspace.data(), 0, nullptr);
  EXPECT_EQ(zero.code, StatusCode::kWorkspaceTooSmall);
  const Status null_ws = run(args, nullptr, bytes, nullptr);
  EXPECT_EQ(null_ws.code, StatusCode::kInvalidArgument);
  EXPECT_EQ(null_ws.message.rfind("workspace: expected ", 0), 0u) << null_ws.message;
  // Every workspace region lies at a 256-byte multiple from the start and is read with 16-byte
  // copies: a start off the 16-byte grid is refused before anything is enqueued.
  ASSERT_EQ(reinterpret_cast<uintptr_t>(workspace.data()) % 16, 0u);
  for (const size_t offset : {2, 8}) {
    const Status misaligned = run(args, workspace.data() + offset, bytes, nullptr);
    EXPECT_EQ(misaligned.code, StatusCode::kInvalidArgument);
    EXPECT_EQ(misaligned.message.rfind("workspace: expected a 16-byte aligned address", 0), 0u)
        << misaligned.message;
  }
  const Status null_result = workspace_size(args.shape, nullptr);
  EXPECT_EQ(null_result.code, StatusCode::kInvalidArgument);
  EXPECT_EQ(null_result.message.rfind("workspace_bytes: expected ", 0), 0u);

  EXPECT_EQ(c.output_checksum(), outputs);
  for (uint8_t b : workspace) ASSERT_EQ(b, 0xA5);
}

}  // namespace
}  // namespace fusedmoe
