#include "ort_utils.h"

#include <sstream>

namespace shark_ort {

const char* element_type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    default: return "an unsupported element type";
  }
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < shape.size(); ++i) o << (i ? ", " : "") << shape[i];
  o << ']';
  return o.str();
}

std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  OrtStatus* s = api().KernelInfo_GetNodeName(info, nullptr, &size);
  if (s) {
    api().ReleaseStatus(s);
    return std::string();
  }
  std::string name(size, '\0');
  s = api().KernelInfo_GetNodeName(info, &name[0], &size);
  if (s) {
    api().ReleaseStatus(s);
    return std::string();
  }
  name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return name;
}

bool read_int_attr(const OrtKernelInfo* info, const char* name, int64_t* out) {
  int64_t v = 0;
  OrtStatus* s = api().KernelInfoGetAttribute_int64(info, name, &v);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  *out = v;
  return true;
}

bool read_ints_attr(const OrtKernelInfo* info, const char* name, std::vector<int64_t>* out) {
  size_t size = 0;
  OrtStatus* s = api().KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  out->assign(size, 0);
  if (size == 0) return true;
  s = api().KernelInfoGetAttributeArray_int64(info, name, out->data(), &size);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  out->resize(size);
  return true;
}

bool read_string_attr(const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  OrtStatus* s = api().KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  std::string v(size, '\0');
  s = api().KernelInfoGetAttribute_string(info, name, &v[0], &size);
  if (s) {
    api().ReleaseStatus(s);
    return false;
  }
  v.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  *out = v;
  return true;
}

OrtStatus* get_input(OrtKernelContext* ctx, size_t index, Input* in) {
  *in = Input();
  size_t n = 0;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetInputCount(ctx, &n));
  if (index >= n) return nullptr;
  const OrtValue* v = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetInput(ctx, index, &v));
  if (!v) return nullptr;
  return describe_value(v, index, in);
}

OrtStatus* describe_value(const OrtValue* v, size_t index, Input* in) {
  *in = Input();
  int is_tensor = 0;
  SHARK_RETURN_IF_STATUS(api().IsTensor(v, &is_tensor));
  if (!is_tensor) return make_status(ORT_INVALID_ARGUMENT, "input " + std::to_string(index) + " is not a tensor");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  SHARK_RETURN_IF_STATUS(api().GetTensorTypeAndShape(v, &info));
  OrtStatus* s = api().GetTensorElementType(info, &in->type);
  size_t rank = 0;
  if (!s) s = api().GetDimensionsCount(info, &rank);
  if (!s) {
    in->shape.resize(rank);
    s = api().GetDimensions(info, in->shape.data(), rank);
  }
  api().ReleaseTensorTypeAndShapeInfo(info);
  if (s) return s;
  uint64_t count = 1;
  for (int64_t d : in->shape) count *= static_cast<uint64_t>(d);
  in->count = count;
  void* data = nullptr;
  SHARK_RETURN_IF_STATUS(api().GetTensorMutableData(const_cast<OrtValue*>(v), &data));
  in->data = data;
  in->present = true;
  return nullptr;
}

OrtStatus* get_output(OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& shape, void** data) {
  OrtValue* v = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetOutput(ctx, index, shape.data(), shape.size(), &v));
  if (!v) return make_status(ORT_FAIL, "could not allocate output " + std::to_string(index));
  return api().GetTensorMutableData(v, data);
}

}  // namespace shark_ort
