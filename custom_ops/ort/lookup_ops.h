// What the CPU and CUDA variants of the two ops share: their declared inputs (OpSpec), shape
// inference, and the bag op's attributes and input checks (so both variants report the same errors).
#pragma once

#include <cstdint>
#include <string>

#include "custom_op.h"
#include "table_kernel.h"

namespace shark_ort {

constexpr size_t kInOffsets = 4, kInWeights = 5;

// provider: null for the CPU EP, else e.g. "CUDAExecutionProvider".
OpSpec gather_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config);
OpSpec bag_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config);

OrtStatus* gather_infer_shape(OrtShapeInferContext* ctx);
OrtStatus* bag_infer_shape(OrtShapeInferContext* ctx);

// The bag op's own attributes, read and checked at kernel creation.
struct BagAttrs {
  int64_t mode = 0, include_last_offset = 0, padding_idx = -1;
};
OrtStatus* read_bag_attrs(const TableKernel& k, const OrtKernelInfo* info, BagAttrs* a);
// What is wrong with a bag's attributes for a table of `num_rows` rows ("" when nothing): the one check of the
// single op and of every bag field of RowwiseDequantMultiLookup.
std::string bag_attrs_error(const BagAttrs& a, int64_t num_rows);

// The bag op's non-table inputs after the structural checks (ranks, presence, types).
struct BagInputs {
  Input idx, offs, wts;
  shark::IndexType index_type = shark::IndexType::kInt64, offsets_type = shark::IndexType::kInt64;
  bool fixed = false;    // 2-D indices [n_bags, bag_len]
  uint64_t bag_len = 0;  // fixed only
  uint64_t n_bags = 0;   // fixed: rows; 1-D: offsets entries (- 1 with include_last_offset)
};
// indices 1-D with 1-D offsets, or 2-D without; everything the CPU kernel checks before reading the
// offsets' values. For 1-D also the include_last_offset + empty offsets error.
OrtStatus* read_bag_inputs(const TableKernel& k, const BagAttrs& a, OrtKernelContext* ctx, BagInputs* in);
// per_sample_weights: float32, the indices' shape, sum mode only.
OrtStatus* check_bag_weights(const TableKernel& k, const BagAttrs& a, const BagInputs& in);

}  // namespace shark_ort
