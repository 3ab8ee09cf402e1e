// Small helpers over the ORT C API: statuses, attributes, input tensors. Every function returns an
// OrtStatus* (null on success) instead of throwing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ort_api.h"

namespace shark_ort {

#define SHARK_RETURN_IF_STATUS(expr)   \
  do {                                 \
    OrtStatus* shark_status_ = (expr); \
    if (shark_status_) return shark_status_; \
  } while (0)

inline OrtStatus* make_status(OrtErrorCode code, const std::string& msg) { return api().CreateStatus(code, msg.c_str()); }

const char* element_type_name(ONNXTensorElementDataType t);
std::string shape_to_string(const std::vector<int64_t>& shape);

// Node name of the kernel ("" when the node has none).
std::string node_name(const OrtKernelInfo* info);

// Reads an int attribute. Returns false (and leaves *out untouched) when missing or not an int.
bool read_int_attr(const OrtKernelInfo* info, const char* name, int64_t* out);

// Reads an int-list attribute. Returns false when missing or not an int list.
bool read_ints_attr(const OrtKernelInfo* info, const char* name, std::vector<int64_t>* out);

// Reads a string attribute. Returns false when missing or not a string.
bool read_string_attr(const OrtKernelInfo* info, const char* name, std::string* out);

// A kernel-context input (or an absent optional one: present == false).
struct Input {
  bool present = false;
  const void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  uint64_t count = 0;  // number of elements
};
OrtStatus* get_input(OrtKernelContext* ctx, size_t index, Input* in);

// Describes a tensor OrtValue (for constant initializers seen at kernel creation).
OrtStatus* describe_value(const OrtValue* v, size_t index, Input* in);

// Allocates output `index` with `shape`; *data receives its buffer.
OrtStatus* get_output(OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& shape, void** data);

// Runs `body` and turns any C++ exception into an OrtStatus (nothing may cross the C ABI).
template <class F>
OrtStatus* guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    return api().CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
  } catch (...) {
    return api().CreateStatus(ORT_RUNTIME_EXCEPTION, "shark_export: unknown C++ exception");
  }
}

}  // namespace shark_ort
