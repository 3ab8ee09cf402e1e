// What the CPU and CUDA variants of RowwiseDequantMultiLookup share (multi_lookup_op.cc, cuda_ops.cc): the
// fields read from the attributes and checked at kernel creation, each field's inputs after the structural
// checks, the batch-size agreement, the error messages, shape inference and the op's declared inputs. The
// variants differ only in how a field's table is validated (host or device memory) and how the lookups run,
// so both raise the same messages for the same node.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "custom_op.h"
#include "lookup_ops.h"
#include "table_kernel.h"

namespace shark_ort {

enum FieldKind : int64_t { kGatherField = 0, kBag2D = 1, kBagOffsets = 2 };

// One field as the attributes describe it (checked at kernel creation).
struct MultiField {
  std::string name;
  std::string label;  // "field 'name': ", the prefix of the field's messages
  int64_t kind = kGatherField;
  BagAttrs bag;       // bags only
  bool has_weights = false;
  size_t first = 0;   // index of its payload input
  size_t n_inputs = 4;
  shark::TableAttrs table;  // validated by shark::validate_attrs
};

// One field's inputs of a run, after the structural checks (ranks, types, presence, weights' shape).
struct FieldInputs {
  Input idx;
  shark::IndexType index_type = shark::IndexType::kInt64;
  Input offs;  // kBagOffsets only
  shark::IndexType offsets_type = shark::IndexType::kInt64;
  const float* weights = nullptr;  // per_sample_weights (bags with has_weights)
  uint64_t samples = 0;            // output rows this field gives
  uint64_t rows_per_sample = 1;    // gather: the product of indices' dims after the first
  uint64_t columns = 0;            // the field's block width: rows_per_sample * dim (gather), dim (bag)
};

class MultiLookupBase : public TableKernel {
 public:
  // output [B, W]: B from the first field, W the sum of the fields' widths when every one is known.
  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx);

 protected:
  // Reads and checks the attributes and the node's input count; then, field by field, calls
  // init_table(k) (the variant's table slot: validates constant tables) and checks the index input
  // types known at creation.
  OrtStatus* init_fields(const OpSpec& spec, const OrtKernelInfo* info,
                         const std::function<OrtStatus*(size_t field)>& init_table);

  // Field k's inputs of this run, with every check the CPU op makes before reading the offsets' values.
  OrtStatus* field_inputs(OrtKernelContext* ctx, size_t k, FieldInputs* in) const;

  // Every field must give the same number of samples (the first field's, kept in *n_samples).
  OrtStatus* check_samples(size_t k, uint64_t samples, uint64_t* n_samples) const;
  // The output row grows by field k's columns; a row or an output too large for 64-bit byte offsets is an error.
  OrtStatus* add_columns(size_t k, const FieldInputs& in, uint64_t* width) const;
  OrtStatus* check_output_size(uint64_t n_samples, uint64_t width) const;

  // Field k's out-of-range index.
  OrtStatus* field_index_error(size_t k, const shark::LookupError& e) const {
    return index_error(e, fields_[k].label, fields_[k].table.num_rows);
  }

  std::vector<MultiField> fields_;

 private:
  OrtStatus* ints(const OrtKernelInfo* info, const char* name, bool required, std::vector<int64_t>* out,
                  size_t n = 0, int64_t dflt = 0) const;
};

// provider: null for the CPU EP, else e.g. "CUDAExecutionProvider".
OpSpec multi_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config);

}  // namespace shark_ort
