// Host-side TMA descriptors: see tensor_map.h.
#include "launch/tensor_map.h"

#include <cuda_bf16.h>

namespace fusedmoe::detail {
namespace {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's entry point, looked up once per process. A function-local static is initialised
// exactly once even when several threads call run() at the same time (C++11 magic statics; the
// earlier `if (cached == nullptr) cached = ...` was a data race). A failed lookup is kept too:
// every caller gets its error.
struct EncodeTiledLookup {
  EncodeTiledFn fn = nullptr;
  cudaError_t error = cudaSuccess;
};

EncodeTiledLookup look_up_encode_tiled() {
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000,
                                                           cudaEnableDefault, &query);
  if (err != cudaSuccess) return {nullptr, err};
  if (query != cudaDriverEntryPointSuccess || entry == nullptr) {
    return {nullptr, cudaErrorNotSupported};
  }
  return {reinterpret_cast<EncodeTiledFn>(entry), cudaSuccess};
}

cudaError_t get_encode_tiled(EncodeTiledFn* fn) {
  static const EncodeTiledLookup lookup = look_up_encode_tiled();
  *fn = lookup.fn;
  return lookup.error;
}

}  // namespace

// The 3-D, 128-byte-swizzled map of either element type.
cudaError_t make_tensor_map_3d_sw128(CUtensorMap* map, CUtensorMapDataType type,
                                     uint64_t element_bytes, const void* base, uint64_t dim0,
                                     uint64_t dim1, uint64_t dim2, uint32_t box0, uint32_t box1) {
  EncodeTiledFn encode = nullptr;
  if (const cudaError_t err = get_encode_tiled(&encode); err != cudaSuccess) return err;
  const cuuint64_t dims[3] = {dim0, dim1, dim2};
  const cuuint64_t strides_bytes[2] = {dim0 * element_bytes, dim0 * dim1 * element_bytes};
  const cuuint32_t box[3] = {box0, box1, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult res = encode(map, type, 3, const_cast<void*>(base), dims, strides_bytes, box,
                              element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t make_tensor_map_3d_bf16_sw128(CUtensorMap* map, const void* base, uint64_t dim0,
                                          uint64_t dim1, uint64_t dim2, uint32_t box0,
                                          uint32_t box1) {
  return make_tensor_map_3d_sw128(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, sizeof(__nv_bfloat16),
                                  base, dim0, dim1, dim2, box0, box1);
}

cudaError_t make_tensor_map_3d_u8_sw128(CUtensorMap* map, const void* base, uint64_t dim0,
                                        uint64_t dim1, uint64_t dim2, uint32_t box0,
                                        uint32_t box1) {
  return make_tensor_map_3d_sw128(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, dim0, dim1, dim2,
                                  box0, box1);
}

}  // namespace fusedmoe::detail
