#include "table_kernel.h"

#include "../kernels/memory_hints.h"

#include <atomic>
#include <sstream>

namespace shark_ort {

std::string TableKernel::where() const { return op_name_ + " node '" + node_name_ + "': "; }

OrtStatus* TableKernel::error(const std::string& msg, OrtErrorCode code) const {
  return make_status(code, where() + msg);
}

OrtStatus* TableKernel::index_error(const shark::LookupError& e, const std::string& label, int64_t num_rows) const {
  std::ostringstream o;
  o << label << "index " << e.value << " at position " << e.position << " is out of range for table with "
    << (num_rows < 0 ? attrs_.num_rows : num_rows) << " rows";
  return error(o.str());
}

OrtStatus* TableKernel::int_attr(const OrtKernelInfo* info, const char* name, bool required, int64_t dflt,
                                 int64_t* out) const {
  if (read_int_attr(info, name, out)) return nullptr;
  std::vector<int64_t> list;
  if (read_ints_attr(info, name, &list) && !list.empty()) {
    return error(std::string("attribute '") + name + "' must be a single int, got a list of " + std::to_string(list.size()) +
                 " ints");
  }
  if (required) return error(std::string("required int attribute '") + name + "' is missing or not an int");
  *out = dflt;
  return nullptr;
}

OrtStatus* TableKernel::init_attrs(const OpSpec& spec, const OrtKernelInfo* info) {
  const shark::OutType out_type = out_type_of(spec.output);
  op_name_ = spec.name;
  config_ = spec.config;
  node_name_ = node_name(info);
  out_type_ = out_type;
  SHARK_RETURN_IF_STATUS(int_attr(info, "format_version", true, 0, &attrs_.format_version));
  SHARK_RETURN_IF_STATUS(int_attr(info, "num_rows", true, 0, &attrs_.num_rows));
  SHARK_RETURN_IF_STATUS(int_attr(info, "dim", true, 0, &attrs_.dim));
  SHARK_RETURN_IF_STATUS(int_attr(info, "uniform_tier", true, 0, &attrs_.uniform_tier));
  SHARK_RETURN_IF_STATUS(int_attr(info, "output_dtype", false, 1, &attrs_.output_dtype));
  SHARK_RETURN_IF_STATUS(int_attr(info, "scale_group_rows", false, 0, &attrs_.scale_group_rows));
  const std::string bad = shark::validate_attrs(attrs_);
  if (!bad.empty()) return error(bad);
  if (attrs_.output_dtype != static_cast<int64_t>(out_type)) {
    return error("output_dtype " + std::to_string(attrs_.output_dtype) + " disagrees with the node's output type " +
                 (out_type == shark::OutType::kFloat16 ? "float16" : "float32"));
  }
  proto_ = shark::make_table_view(attrs_);
  return nullptr;
}

OrtStatus* constant_table_inputs(const OrtKernelInfo* info, Input constant[3], bool* all_constant, size_t first) {
  *all_constant = true;
  for (size_t i = 0; i < 3; ++i) {
    int is_constant = 0;
    const OrtValue* v = nullptr;
    OrtStatus* s = api().KernelInfoGetConstantInput_tensor(info, first + i, &is_constant, &v);
    if (s) {
      api().ReleaseStatus(s);
      is_constant = 0;
    }
    if (!is_constant || !v) {
      *all_constant = false;
      continue;
    }
    SHARK_RETURN_IF_STATUS(describe_value(v, first + i, &constant[i]));
  }
  return nullptr;
}

void CpuTables::fill(const shark::TableView& proto, const shark::TableAttrs&, const Input (&in)[3], View* t) {
  *t = proto;
  t->payload = static_cast<const uint8_t*>(in[0].data);
  t->payload_bytes = in[0].count;
  t->meta = in[1].count ? static_cast<const uint64_t*>(in[1].data) : nullptr;
  t->meta_blocks = in[1].shape.size() == 2 ? static_cast<uint64_t>(in[1].shape[0]) : 0;
  t->default_row = in[2].count ? static_cast<const float*>(in[2].data) : nullptr;
}

OrtStatus* CpuTables::validate(const TableKernel&, const std::string&, const shark::TableView&, const Input (&in)[3],
                               const View& t, Stream, Validation, std::string* bad) {
  *bad = shark::validate_table(t, shark::TableShapes{in[0].shape, in[1].shape, in[2].shape});
  return nullptr;
}

void CpuTables::remembered(const TableKernel& k, const View& t, Validation when) {
  shark::advise_random(t.payload, t.payload_bytes);  // once per table: random rows, no read-around
  if (when == Validation::kAtCreation && k.config_.huge_pages) shark::advise_huge_pages(t.payload, t.payload_bytes);
}

static const char* const kTableInputNames[3] = {"payload", "row_meta", "default_row"};
static const ONNXTensorElementDataType kTableInputTypes[3] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};

TableKey table_key(const Input& payload, const Input& meta, const Input& dflt) {
  return TableKey{payload.data, payload.count, meta.data, meta.count, dflt.data, dflt.count};
}

OrtStatus* TableKernel::check_table_inputs(const Input& payload, const Input& meta, const Input& dflt,
                                           const std::string& label) const {
  const Input* in[3] = {&payload, &meta, &dflt};
  for (int i = 0; i < 3; ++i) {
    if (!in[i]->present) return error(label + "input '" + kTableInputNames[i] + "' is missing");
    if (in[i]->type != kTableInputTypes[i]) {
      return error(label + "input '" + kTableInputNames[i] + "' must be " + element_type_name(kTableInputTypes[i]) +
                   ", got " + element_type_name(in[i]->type));
    }
  }
  return nullptr;
}

OrtStatus* TableKernel::index_input(OrtKernelContext* ctx, size_t index, const char* name, bool required, Input* in,
                                    shark::IndexType* type, const std::string& label) const {
  SHARK_RETURN_IF_STATUS(get_input(ctx, index, in));
  if (!in->present) return required ? error(label + "input '" + name + "' is missing") : nullptr;
  if (in->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
    *type = shark::IndexType::kInt32;
  } else if (in->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
    *type = shark::IndexType::kInt64;
  } else {
    return error(label + "input '" + name + "' must be int32 or int64, got " + element_type_name(in->type));
  }
  return nullptr;
}

OrtStatus* TableKernel::check_index_type(const OrtKernelInfo* info, size_t index, const char* name,
                                         const std::string& label) const {
  size_t n = 0;
  OrtStatus* s = api().KernelInfo_GetInputCount(info, &n);
  if (s) {
    api().ReleaseStatus(s);
    return nullptr;
  }
  if (index >= n) return nullptr;
  OrtTypeInfo* type_info = nullptr;
  s = api().KernelInfo_GetInputTypeInfo(info, index, &type_info);
  if (s || !type_info) {
    if (s) api().ReleaseStatus(s);
    return nullptr;  // absent optional input, or not known yet: checked when the kernel runs
  }
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  s = api().CastTypeInfoToTensorInfo(type_info, &tensor_info);
  if (!s && tensor_info) s = api().GetTensorElementType(tensor_info, &t);
  if (s) api().ReleaseStatus(s);
  api().ReleaseTypeInfo(type_info);
  if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
      t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
    return nullptr;
  }
  return error(label + "input '" + name + "' must be int32 or int64, got " + element_type_name(t));
}

void OrtParallelFor::run(size_t n_tasks, void (*fn)(void*, size_t), void* ctx) {
  if (status_) return;  // an earlier run already failed: the kernel reports that one
  status_ = api().KernelContext_ParallelFor(ctx_, fn, n_tasks, 0, ctx);
}

OrtStatus* OrtParallelFor::take_status() {
  OrtStatus* s = status_;
  status_ = nullptr;
  return s;
}

OrtParallelFor::~OrtParallelFor() {
  if (status_) api().ReleaseStatus(status_);
}

bool infer_int_attr(const OrtShapeInferContext* ctx, const char* name, int64_t* out) {
  const OrtOpAttr* attr = nullptr;
  OrtStatus* s = api().ShapeInferContext_GetAttribute(ctx, name, &attr);
  if (s || !attr) {
    if (s) api().ReleaseStatus(s);
    return false;
  }
  int64_t v = 0;
  size_t got = 0;
  s = api().ReadOpAttr(attr, ORT_OP_ATTR_INT, &v, sizeof(v), &got);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  *out = v;
  return true;
}

bool infer_ints_attr(const OrtShapeInferContext* ctx, const char* name, std::vector<int64_t>* out) {
  const OrtOpAttr* attr = nullptr;
  OrtStatus* s = api().ShapeInferContext_GetAttribute(ctx, name, &attr);
  if (s || !attr) {
    if (s) api().ReleaseStatus(s);
    return false;
  }
  size_t size = 0;
  s = api().ReadOpAttr(attr, ORT_OP_ATTR_INTS, nullptr, 0, &size);  // asks for the size in bytes
  if (s) {
    api().ReleaseStatus(s);
    if (size == 0) return false;
  }
  out->assign(size / sizeof(int64_t), 0);
  if (out->empty()) return true;
  size_t got = 0;
  s = api().ReadOpAttr(attr, ORT_OP_ATTR_INTS, out->data(), out->size() * sizeof(int64_t), &got);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  return true;
}

ONNXTensorElementDataType infer_output_type(const OrtShapeInferContext* ctx) {
  int64_t v = 1;
  infer_int_attr(ctx, "output_dtype", &v);
  return v == static_cast<int64_t>(shark::OutType::kFloat16) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                             : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

InferredInput infer_input(const OrtShapeInferContext* ctx, size_t index) {
  InferredInput r;
  size_t n = 0;
  OrtStatus* s = api().ShapeInferContext_GetInputCount(ctx, &n);
  if (s) {
    api().ReleaseStatus(s);
    return r;
  }
  if (index >= n) return r;
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  s = api().ShapeInferContext_GetInputTypeShape(ctx, index, &info);
  if (s || !info) {
    if (s) api().ReleaseStatus(s);
    return r;
  }
  size_t rank = 0;
  s = api().GetTensorElementType(info, &r.type);
  if (!s) s = api().GetDimensionsCount(info, &rank);
  if (!s) {
    r.dims.resize(rank);
    s = api().GetDimensions(info, r.dims.data(), rank);
  }
  std::vector<const char*> sym(rank, nullptr);
  if (!s) s = api().GetSymbolicDimensions(info, sym.data(), rank);
  if (s) {
    api().ReleaseStatus(s);
    return r;
  }
  r.symbols.resize(rank);
  for (size_t i = 0; i < rank; ++i) r.symbols[i] = sym[i] ? sym[i] : "";
  r.known = true;
  return r;
}

OrtStatus* infer_set_output(const OrtShapeInferContext* ctx, ONNXTensorElementDataType elem_type,
                            const std::vector<int64_t>& dims, std::vector<std::string> symbols) {
  static std::atomic<uint64_t> counter{0};
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0 && symbols[i].empty()) symbols[i] = "shark_export_dim_" + std::to_string(counter++);
    if (dims[i] >= 0) symbols[i].clear();
  }
  std::vector<const char*> sym(symbols.size());
  for (size_t i = 0; i < symbols.size(); ++i) sym[i] = symbols[i].c_str();
  OrtTensorTypeAndShapeInfo* info = nullptr;
  SHARK_RETURN_IF_STATUS(api().CreateTensorTypeAndShapeInfo(&info));
  OrtStatus* s = api().SetTensorElementType(info, elem_type);
  if (!s) s = api().SetDimensions(info, dims.data(), dims.size());
  if (!s) s = api().SetSymbolicDimensions(info, sym.data(), sym.size());
  if (!s) s = api().ShapeInferContext_SetOutputTypeShape(ctx, 0, info);
  api().ReleaseTensorTypeAndShapeInfo(info);
  return s;
}

}  // namespace shark_ort
