// What both table-reading ops share: attributes read at kernel creation, the three table inputs,
// and the validation (with a cache keyed by the tensors' data pointers and sizes).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "../kernels/config.h"
#include "../kernels/lookup.h"
#include "../kernels/parallel.h"
#include "../kernels/table.h"
#include "custom_op.h"
#include "ort_utils.h"

namespace shark_ort {

constexpr size_t kInPayload = 0, kInRowMeta = 1, kInDefaultRow = 2, kInIndices = 3;

inline shark::OutType out_type_of(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? shark::OutType::kFloat16 : shark::OutType::kFloat32;
}

// At kernel creation: describes the three table tensors (inputs first, first + 1, first + 2) when all are
// constant initializers (sets *all_constant); tables fed as graph inputs are only known at run time.
OrtStatus* constant_table_inputs(const OrtKernelInfo* info, Input constant[3], bool* all_constant, size_t first = 0);

// Identity of a validated table (its tensors' pointers and sizes): a run whose tensors match skips the
// validation. Shared by the CPU and CUDA kernels.
struct TableKey {
  const void* payload = nullptr;
  uint64_t payload_bytes = 0;
  const void* meta = nullptr;
  uint64_t meta_count = 0;
  const void* dflt = nullptr;
  uint64_t dflt_count = 0;
  bool operator==(const TableKey& o) const {
    return payload == o.payload && payload_bytes == o.payload_bytes && meta == o.meta &&
           meta_count == o.meta_count && dflt == o.dflt && dflt_count == o.dflt_count;
  }
};

// The one table a kernel last validated: a run whose tensors match skips the validation. Thread-safe
// (sessions run concurrently). Used by the CPU and CUDA kernels alike.
class ValidationCache {
 public:
  bool hit(const TableKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    return valid_ && key_ == key;
  }
  void remember(const TableKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    valid_ = true;
    key_ = key;
  }

 private:
  std::mutex mu_;
  bool valid_ = false;
  TableKey key_;
};

TableKey table_key(const Input& payload, const Input& meta, const Input& dflt);

class TableKernel;

// When a table slot validates its tensors: at kernel creation (constant initializers; remembered), in a run whose
// tensors may be the ones remembered (constant initializers), or in every run (tables fed as graph inputs).
enum class Validation { kAtCreation, kCachedRun, kEveryRun };

// How a table slot reads its three tensors on the CPU: host memory, the view points into them, validation reads
// row_meta in place. (CUDA's counterpart, CudaTables, is in cuda_adapter.h.)
struct CpuTables {
  using View = shark::TableView;
  using Stream = std::nullptr_t;
  static void fill(const shark::TableView& proto, const shark::TableAttrs& attrs, const Input (&in)[3], View* t);
  static OrtStatus* validate(const TableKernel& k, const std::string& label, const shark::TableView& proto,
                             const Input (&in)[3], const View& t, Stream stream, Validation when, std::string* bad);
  static void remembered(const TableKernel& k, const View& t, Validation when);  // memory hints, once per table
};

// One table a node reads: its attributes, where its three tensors are among the node's inputs, and their
// validation (at kernel creation for constant initializers, then once per data pointer; on every run for tables
// fed as graph inputs). A one-table op has one; RowwiseDequantMultiLookup one per field. `Device` (CpuTables,
// CudaTables) says how the tensors become the kernels' view of the table and how they are validated.
template <class Device>
class TableSlot {
 public:
  using View = typename Device::View;
  using Stream = typename Device::Stream;

  // `label` prefixes this table's messages ("" for a one-table op, "field 'x': " in a group).
  OrtStatus* init(const TableKernel& k, const shark::TableAttrs& attrs, size_t first_input, std::string label,
                  const OrtKernelInfo* info) {
    attrs_ = attrs;
    proto_ = shark::make_table_view(attrs);
    first_ = first_input;
    label_ = std::move(label);
    Input constant[3];
    SHARK_RETURN_IF_STATUS(constant_table_inputs(info, constant, &constant_, first_));
    if (!constant_) return nullptr;
    View t;
    return check(k, constant, Stream{}, Validation::kAtCreation, &t);
  }

  // The validated table of this run.
  OrtStatus* view(const TableKernel& k, OrtKernelContext* ctx, View* t, Stream stream = Stream{}) {
    Input in[3];
    for (size_t i = 0; i < 3; ++i) SHARK_RETURN_IF_STATUS(get_input(ctx, first_ + i, &in[i]));
    return check(k, in, stream, constant_ ? Validation::kCachedRun : Validation::kEveryRun, t);
  }
  const shark::TableAttrs& attrs() const { return attrs_; }

 private:
  OrtStatus* check(const TableKernel& k, const Input (&in)[3], Stream stream, Validation when, View* t);

  shark::TableAttrs attrs_;
  shark::TableView proto_;
  size_t first_ = 0;
  std::string label_;
  bool constant_ = false;  // all three tensors are constant initializers
  ValidationCache validated_;
};

// What every kernel of ours shares, whatever tables it reads: its node's name and messages, the session's
// settings, the table attributes of a one-table op, and the input checks.
class TableKernel {
 public:
  // Takes the op's name, the session's settings and the output element type of the kernel variant ORT chose
  // from `spec`, and reads and checks the table attributes (output_dtype must agree with that type).
  OrtStatus* init_attrs(const OpSpec& spec, const OrtKernelInfo* info);

  // "OpName node 'name': " + msg, as an ORT error.
  OrtStatus* error(const std::string& msg, OrtErrorCode code = ORT_INVALID_ARGUMENT) const;
  std::string where() const;

  // The three table inputs are present and of their dtypes (uint8, uint64, float32); `label` prefixes
  // the message.
  OrtStatus* check_table_inputs(const Input& payload, const Input& meta, const Input& dflt,
                                const std::string& label = std::string()) const;

  // Error for an out-of-range index of a table of `num_rows` rows (default: this op's table).
  OrtStatus* index_error(const shark::LookupError& e, const std::string& label = std::string(),
                         int64_t num_rows = -1) const;

  // Reads an input that must be an int32 or int64 tensor (`label` prefixes the messages).
  OrtStatus* index_input(OrtKernelContext* ctx, size_t index, const char* name, bool required, Input* in,
                         shark::IndexType* type, const std::string& label = std::string()) const;

  // At kernel creation: fails when input `index` has a known element type other than int32/int64.
  OrtStatus* check_index_type(const OrtKernelInfo* info, size_t index, const char* name,
                              const std::string& label = std::string()) const;

  const shark::TableAttrs& attrs() const { return attrs_; }

  shark::KernelConfig config_;  // the session's settings (from the OpSpec given to init)

  OrtStatus* int_attr(const OrtKernelInfo* info, const char* name, bool required, int64_t dflt, int64_t* out) const;

 protected:

  std::string op_name_, node_name_;
  shark::TableAttrs attrs_;
  shark::TableView proto_;
  shark::OutType out_type_ = shark::OutType::kFloat32;
};

// The CPU kernels of RowwiseDequantGather and RowwiseDequantEmbeddingBag: one table, in host memory.
class CpuTableKernel : public TableKernel {
 public:
  // init_attrs(), then the table validated now when its three tensors are constant initializers.
  OrtStatus* init(const OpSpec& spec, const OrtKernelInfo* info) {
    SHARK_RETURN_IF_STATUS(init_attrs(spec, info));
    return slot_.init(*this, attrs_, kInPayload, std::string(), info);
  }
  // The validated table of this run.
  OrtStatus* table(OrtKernelContext* ctx, shark::TableView* t) { return slot_.view(*this, ctx, t); }

 private:
  TableSlot<CpuTables> slot_;
};

template <class Device>
OrtStatus* TableSlot<Device>::check(const TableKernel& k, const Input (&in)[3], Stream stream, Validation when,
                                    View* t) {
  SHARK_RETURN_IF_STATUS(k.check_table_inputs(in[0], in[1], in[2], label_));
  Device::fill(proto_, attrs_, in, t);
  const bool cache = when != Validation::kEveryRun;
  const TableKey key = table_key(in[0], in[1], in[2]);
  if (cache && validated_.hit(key)) return nullptr;
  std::string bad;
  SHARK_RETURN_IF_STATUS(Device::validate(k, label_, proto_, in, *t, stream, when, &bad));
  if (!bad.empty()) return k.error(label_ + "invalid table: " + bad);
  if (cache) {
    validated_.remember(key);
    Device::remembered(k, *t, when);
  }
  return nullptr;
}

// shark::ParallelFor over ORT's intra-op thread pool.
// ORT's intra-op pool. When ORT cannot run the tasks, nothing runs and `take_status()` returns the error:
// the kernel fails the run with it (no silent fallback).
class OrtParallelFor final : public shark::ParallelFor {
 public:
  explicit OrtParallelFor(const OrtKernelContext* ctx) : ctx_(ctx) {}
  ~OrtParallelFor() override;
  void run(size_t n_tasks, void (*fn)(void*, size_t), void* ctx) override;
  OrtStatus* take_status();

 private:
  const OrtKernelContext* ctx_;
  OrtStatus* status_ = nullptr;
};

// Reads an int attribute from a shape-inference context; false when absent.
bool infer_int_attr(const OrtShapeInferContext* ctx, const char* name, int64_t* out);
// Reads an int-list attribute from a shape-inference context; false when absent.
bool infer_ints_attr(const OrtShapeInferContext* ctx, const char* name, std::vector<int64_t>* out);

// Output element type named by the node's output_dtype attribute (float32 when absent or invalid;
// an invalid value fails later, at kernel creation, with a message naming the node).
ONNXTensorElementDataType infer_output_type(const OrtShapeInferContext* ctx);

// Sets output 0 of a shape-inference context to `elem_type` with `dims` (-1 = unknown dim) and
// `symbols` (symbolic names, "" where dims has a value).
OrtStatus* infer_set_output(const OrtShapeInferContext* ctx, ONNXTensorElementDataType elem_type,
                            const std::vector<int64_t>& dims, std::vector<std::string> symbols);

// Input `index` of a shape-inference context (rank, dims with -1 for unknown, symbolic names).
struct InferredInput {
  bool known = false;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  std::vector<std::string> symbols;
};
InferredInput infer_input(const OrtShapeInferContext* ctx, size_t index);

}  // namespace shark_ort
