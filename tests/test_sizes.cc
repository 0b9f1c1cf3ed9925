// Size limits and the workspace query at large shapes (issue 7, "Sizes"): workspace_size() at
// T = 65536, H = 7168 for K = 8/32 and E = 256/1024 (shards too) lies between exact 128-bit
// bounds (so no product overflowed), is monotone in T, and the size limits of validate.h
// (T * K <= 2^30, H, I <= 2^20) are enforced exactly at their edges, where the workspace still
// computes without overflow. The GPU side of the same shapes is tests/test_gpu_hostile.cu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/moe_case.h"
#include "fusedmoe/fusedmoe.h"
#include "validate.h"

namespace fusedmoe {
namespace {

using u128 = unsigned __int128;

// Bounds on the workspace from first principles (docs/reliability.md): the dense regions are
// slot_key, slot_weight, gather_rows, permuted_idx (4 bytes per slot each), act [T*K, I] and
// y [T*K, H] in bf16, expert_offsets [E_loc + 1]; the permutation's per-chunk table adds at most
// ceil(T*K / 1024) * E_loc * 4 bytes, and each of at most 8 regions rounds up by < 256 bytes.
struct Bounds {
  u128 lower, upper;
};
Bounds workspace_bounds(const MoeShape& s) {
  const u128 slots = static_cast<u128>(s.num_tokens) * static_cast<u128>(s.top_k);
  const u128 dense = slots * 16 +
                     slots * static_cast<u128>(s.hidden_size + s.intermediate_size) * 2 +
                     static_cast<u128>(s.local_num_experts + 1) * 4;
  const u128 chunks = (slots + 1023) / 1024;
  return {dense, dense + chunks * static_cast<u128>(s.local_num_experts) * 4 + 8 * 256};
}

MoeShape shape_of(int64_t T, int64_t H, int64_t I, int32_t E, int32_t K, int32_t E_loc,
                  int32_t offset) {
  MoeShape s = test::make_shape(T, H, I, E, K);
  s.local_num_experts = E_loc;
  s.local_expert_offset = offset;
  return s;
}

TEST(Sizes, WorkspaceAtDeepSeekScaleHasNoOverflowAndIsMonotoneInT) {
  for (const int32_t K : {8, 32}) {
    for (const int32_t E : {256, 1024}) {
      for (const int32_t E_loc : {E, E / 8}) {
        for (const int64_t I : {int64_t{2048}, int64_t{256}}) {
          SCOPED_TRACE("K " + std::to_string(K) + " E " + std::to_string(E) + " E_loc " +
                       std::to_string(E_loc) + " I " + std::to_string(I));
          MoeShape shape = shape_of(65536, 7168, I, E, K, E_loc, E - E_loc);
          size_t bytes = 0;
          ASSERT_TRUE(workspace_size(shape, &bytes).ok());
          const Bounds b = workspace_bounds(shape);
          EXPECT_GE(static_cast<u128>(bytes), b.lower);
          EXPECT_LE(static_cast<u128>(bytes), b.upper);
          // T * K * H passes 2^31 here: the y region alone is more than 4 GiB (K = 8).
          EXPECT_GT(static_cast<u128>(bytes), u128{1} << 32);
          EXPECT_EQ(permuted_capacity(65536, K, E_loc), int64_t{65536} * K);

          size_t previous = 0;
          for (const int64_t T : {0, 1, 2, 7, 19, 127, 128, 129, 1023, 1024, 1025, 4095, 4096, 4097,
                                  16384, 65535, 65536, 65537, 1 << 20}) {
            shape.num_tokens = T;
            size_t at_t = 0;
            ASSERT_TRUE(workspace_size(shape, &at_t).ok()) << "T " << T;
            EXPECT_GE(at_t, previous) << "not monotone at T " << T;
            const Bounds bt = workspace_bounds(shape);
            EXPECT_GE(static_cast<u128>(at_t), bt.lower) << "T " << T;
            EXPECT_LE(static_cast<u128>(at_t), bt.upper) << "T " << T;
            previous = at_t;
          }
        }
      }
    }
  }
}

TEST(Sizes, LimitsAreEnforcedAtTheirEdges) {
  // T * K <= 2^30: the largest T passes, one more is rejected, for K = 1, 8, 32.
  for (const int32_t K : {1, 8, 32}) {
    const int64_t max_t = detail::kMaxNumSlots / K;
    MoeShape shape = shape_of(max_t, 8, 8, 1024, K, 1024, 0);
    EXPECT_TRUE(detail::validate_shape(shape).ok()) << "K " << K;
    shape.num_tokens = max_t + 1;
    const Status status = detail::validate_shape(shape);
    EXPECT_EQ(status.code, StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message.rfind("shape.num_tokens: expected ", 0), 0u) << status.message;
    shape.num_tokens = std::numeric_limits<int64_t>::max();  // T * K would overflow int64
    EXPECT_EQ(detail::validate_shape(shape).code, StatusCode::kInvalidArgument);
  }
  // H and I up to 2^20.
  MoeShape shape = shape_of(4, detail::kMaxFeatureSize, detail::kMaxFeatureSize, 8, 2, 8, 0);
  EXPECT_TRUE(detail::validate_shape(shape).ok());
  shape.hidden_size += 8;
  EXPECT_EQ(detail::validate_shape(shape).message.rfind("shape.hidden_size: expected ", 0), 0u);
  shape.hidden_size = detail::kMaxFeatureSize;
  shape.intermediate_size += 8;
  EXPECT_EQ(detail::validate_shape(shape).message.rfind("shape.intermediate_size: expected ", 0),
            0u);
}

// At the corner of the limits (T * K = 2^30, H = I = 2^20, E_loc = 1024) the workspace is ~2^52
// bytes and still computes exactly: size_t cannot wrap for any accepted shape.
TEST(Sizes, WorkspaceAtTheLimitsDoesNotWrap) {
  for (const int32_t K : {1, 32}) {
    const MoeShape shape = shape_of(detail::kMaxNumSlots / K, detail::kMaxFeatureSize,
                                    detail::kMaxFeatureSize, 1024, K, 1024, 0);
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size(shape, &bytes).ok());
    const Bounds b = workspace_bounds(shape);
    EXPECT_GE(static_cast<u128>(bytes), b.lower);
    EXPECT_LE(static_cast<u128>(bytes), b.upper);
    EXPECT_LT(b.upper, static_cast<u128>(std::numeric_limits<size_t>::max()) / 1024);
  }
}

// The grouped GEMMs index tiles in int32 (src/device/grouped_tile_scheduler.cuh). Their count
// can pass 2^31 only for shapes whose workspace is beyond any memory: wherever the tile count of
// either GEMM exceeds INT32_MAX, the workspace is over 64 TiB (docs/reliability.md).
TEST(Sizes, Int32TileIndicesNeedAnImpossibleWorkspaceToOverflow) {
  int overflowing = 0;
  for (int64_t slots = 1; slots <= detail::kMaxNumSlots; slots *= 4) {
    for (int64_t feature = 8; feature <= detail::kMaxFeatureSize; feature *= 4) {
      for (const int32_t E_loc : {1, 1024}) {
        const MoeShape shape = shape_of(slots, feature, feature, 1024, 1, E_loc, 0);
        // 128-row M blocks (one partial block per non-empty expert at most); N blocks of
        // 128 act columns (GEMM1) or 256 output columns (GEMM2) (src/heuristics.h).
        const int64_t m_blocks = (slots + 127) / 128 + std::min<int64_t>(E_loc, slots);
        const int64_t tiles = m_blocks * std::max((feature + 127) / 128, (feature + 255) / 256);
        const int64_t largest_row = slots - 1 + 127;  // a tile's last row, computed in int32
        EXPECT_LE(largest_row, std::numeric_limits<int32_t>::max());
        if (tiles <= std::numeric_limits<int32_t>::max()) continue;
        ++overflowing;
        size_t bytes = 0;
        ASSERT_TRUE(workspace_size(shape, &bytes).ok());
        EXPECT_GT(bytes, size_t{1} << 46) << "slots " << slots << " H = I = " << feature;
      }
    }
  }
  EXPECT_GT(overflowing, 0) << "the grid should reach the overflowing corner";
}

}  // namespace
}  // namespace fusedmoe
