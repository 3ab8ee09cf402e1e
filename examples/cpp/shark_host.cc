// shark_host: run a shark-export model from C++ with the ONNX Runtime C++ API.
//
//   shark_host [--library PATH] [--threads N] [--config KEY=VALUE]... MODEL.onnx INPUT_DIR [OUTPUT_DIR]
//
// * MODEL.onnx: a converted model; an external data file next to it is found by ONNX Runtime.
// * --library: the custom-op library libshark_export_ops.so (default: $SHARK_EXPORT_LIBRARY). Python prints
//   where the installed package keeps it: python -c "import shark_export; print(shark_export.ops.library_path())"
// * INPUT_DIR: one NumPy .npy file per model input, named <input name>.npy (C order, little-endian; int64,
//   int32, float32 and the other numeric dtypes, any rank). Every input needs its file; a file that names no
//   input is an error.
// * OUTPUT_DIR: each output is written to <output name>.npy. Without it, the outputs are printed: a line
//   "<name> <dtype> <shape>" and then one value per line (floats with enough digits to read back exactly).
// * --threads N: intra-op threads (inter-op 1); --config KEY=VALUE: the library's session config entry
//   shark_export.KEY (cpu_isa, stream_bytes, huge_pages, cuda; see custom_ops/README.md).
//
// Exit status: 0 on success, 2 for a usage error, 1 for any other error (message on stderr).

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// An error with a message for the user (exit status 1).
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// Element types: ONNX type <-> .npy descr
// ---------------------------------------------------------------------------------------------
struct DType {
  ONNXTensorElementDataType onnx;
  const char* descr;  // .npy descr, little-endian
  const char* name;   // numpy name
  size_t size;
};

const DType kTypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "<f4", "float32", 4},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, "<f8", "float64", 8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "<f2", "float16", 2},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "<i8", "int64", 8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "<i4", "int32", 4},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, "<i2", "int16", 2},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "|i1", "int8", 1},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, "<u8", "uint64", 8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, "<u4", "uint32", 4},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, "<u2", "uint16", 2},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "|u1", "uint8", 1},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, "|b1", "bool", 1},
};

const DType* type_of_onnx(ONNXTensorElementDataType t) {
  for (const auto& d : kTypes)
    if (d.onnx == t) return &d;
  return nullptr;
}

const DType* type_of_descr(std::string descr) {
  // '=' (native) is little-endian on the machines this runs on; one-byte types may come with '<' or '|'.
  if (!descr.empty() && descr[0] == '=') descr[0] = '<';
  for (const auto& d : kTypes) {
    std::string want = d.descr;
    if (descr == want || (d.size == 1 && descr.size() == 3 && descr.substr(1) == want.substr(1) &&
                          (descr[0] == '<' || descr[0] == '|')))
      return &d;
  }
  return nullptr;
}

std::string onnx_type_name(ONNXTensorElementDataType t) {
  const DType* d = type_of_onnx(t);
  return d ? d->name : "ONNX element type " + std::to_string(static_cast<int>(t));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += shape[i] < 0 ? std::string("?") : std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// .npy files (format versions 1.0, 2.0 and 3.0)
// ---------------------------------------------------------------------------------------------
struct Array {
  const DType* type = nullptr;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // C order
};

std::string npy_value(const std::string& header, const std::string& key, const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw Failure(path + ": the .npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) throw Failure(path + ": malformed .npy header");
  size_t start = header.find_first_not_of(" ", colon + 1);
  if (start == std::string::npos) throw Failure(path + ": malformed .npy header");
  size_t end;
  if (header[start] == '\'') {
    end = header.find('\'', start + 1);
    if (end == std::string::npos) throw Failure(path + ": malformed .npy header");
    return header.substr(start + 1, end - start - 1);
  }
  if (header[start] == '(') {
    end = header.find(')', start);
    if (end == std::string::npos) throw Failure(path + ": malformed .npy header");
    return header.substr(start, end - start + 1);
  }
  end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

Array read_npy(const fs::path& file) {
  const std::string path = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Failure("cannot open " + path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    throw Failure(path + " is not a .npy file (no \\x93NUMPY magic)");
  const int major = bytes[6];
  size_t header_len, offset;
  if (major == 1) {
    header_len = bytes[8] | (size_t(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw Failure(path + ": truncated .npy header");
    header_len = bytes[8] | (size_t(bytes[9]) << 8) | (size_t(bytes[10]) << 16) | (size_t(bytes[11]) << 24);
    offset = 12;
  } else {
    throw Failure(path + ": unsupported .npy format version " + std::to_string(major));
  }
  if (bytes.size() < offset + header_len) throw Failure(path + ": truncated .npy header");
  const std::string header(reinterpret_cast<const char*>(bytes.data() + offset), header_len);

  Array a;
  const std::string descr = npy_value(header, "descr", path);
  a.type = type_of_descr(descr);
  if (!a.type)
    throw Failure(path + ": dtype '" + descr +
                  "' is not supported (little-endian numeric types and bool only; no strings, objects or structs)");
  const std::string fortran = npy_value(header, "fortran_order", path);
  std::string dims = npy_value(header, "shape", path);
  if (dims.size() < 2 || dims.front() != '(' || dims.back() != ')') throw Failure(path + ": malformed shape " + dims);
  std::stringstream ss(dims.substr(1, dims.size() - 2));
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(std::remove(item.begin(), item.end(), ' '), item.end());
    if (item.empty()) continue;
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (*end != '\0' || v < 0) throw Failure(path + ": malformed shape " + dims);
    a.shape.push_back(v);
  }
  if (fortran.find("True") != std::string::npos && a.shape.size() > 1)
    throw Failure(path + " is stored in Fortran order; save np.ascontiguousarray(x) instead");

  size_t count = 1;
  for (int64_t d : a.shape) count *= static_cast<size_t>(d);
  const size_t want = count * a.type->size, have = bytes.size() - offset - header_len;
  if (have != want)
    throw Failure(path + ": shape " + shape_str(a.shape) + " of " + a.type->name + " needs " + std::to_string(want) +
                  " data bytes, the file has " + std::to_string(have));
  a.data.assign(bytes.begin() + offset + header_len, bytes.end());
  return a;
}

void write_npy(const fs::path& file, const DType& type, const std::vector<int64_t>& shape, const void* data,
               size_t nbytes) {
  std::string dims = "(";
  for (size_t i = 0; i < shape.size(); ++i) dims += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  dims += ")";
  std::string header = std::string("{'descr': '") + type.descr + "', 'fortran_order': False, 'shape': " + dims + ", }";
  const size_t total = 10 + header.size() + 1;  // magic, version, length, header, '\n': a multiple of 64
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(file, std::ios::binary);
  if (!out) throw Failure("cannot write " + file.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  if (!out) throw Failure("could not write " + file.string());
}

// ---------------------------------------------------------------------------------------------
// Printing: floats with enough digits to read them back bit for bit
// ---------------------------------------------------------------------------------------------
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      uint32_t m = mant;
      do { ++e; m <<= 1; } while ((m & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (m & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void print_value(const DType& t, const uint8_t* p) {
  switch (t.onnx) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: { float v; std::memcpy(&v, p, 4); std::printf("%.9g\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: { double v; std::memcpy(&v, p, 8); std::printf("%.17g\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: { uint16_t v; std::memcpy(&v, p, 2); std::printf("%.5g\n", half_to_float(v)); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: { int64_t v; std::memcpy(&v, p, 8); std::printf("%" PRId64 "\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: { int32_t v; std::memcpy(&v, p, 4); std::printf("%" PRId32 "\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: { int16_t v; std::memcpy(&v, p, 2); std::printf("%d\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: std::printf("%d\n", static_cast<int8_t>(*p)); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: { uint64_t v; std::memcpy(&v, p, 8); std::printf("%" PRIu64 "\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: { uint32_t v; std::memcpy(&v, p, 4); std::printf("%" PRIu32 "\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: { uint16_t v; std::memcpy(&v, p, 2); std::printf("%u\n", v); break; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: std::printf("%u\n", *p); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: std::printf("%s\n", *p ? "true" : "false"); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// The hint for a model whose shark_export ops ONNX Runtime could not find
// ---------------------------------------------------------------------------------------------
bool is_missing_op_error(const std::string& what) {
  const bool ours = what.find("shark_export") != std::string::npos || what.find("RowwiseDequant") != std::string::npos;
  const bool missing = what.find("is not a registered function/op") != std::string::npos ||
                       what.find("No Op registered for") != std::string::npos ||
                       what.find("Could not find an implementation for") != std::string::npos;
  return ours && missing;
}

void print_missing_op_hint(const std::string& library) {
  std::fprintf(stderr,
               "hint: the model uses custom ops of ONNX domain 'shark_export', served by the shark-export custom-op "
               "library libshark_export_ops.so; the library registered here (%s) does not provide them. Register the "
               "library that came with the shark-export package that converted the model: shark_export.ops.library_path() "
               "finds it (python -c \"import shark_export; print(shark_export.ops.library_path())\"; $SHARK_EXPORT_LIBRARY "
               "overrides it). A library older than the model lacks its newer ops: rebuild or reinstall it.\n",
               library.c_str());
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------
struct Args {
  std::string library, model, input_dir, output_dir;
  int threads = 0;
  std::vector<std::pair<std::string, std::string>> config;
};

const char kUsage[] =
    "usage: shark_host [--library PATH] [--threads N] [--config KEY=VALUE]... MODEL.onnx INPUT_DIR [OUTPUT_DIR]\n"
    "  INPUT_DIR holds <input name>.npy for every model input; outputs go to OUTPUT_DIR/<output name>.npy,\n"
    "  or are printed when OUTPUT_DIR is not given. --library defaults to $SHARK_EXPORT_LIBRARY.\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "shark_host: %s\n%s", message.c_str(), kUsage);
  return 2;
}

int run(const Args& args) {
  // The API version of the headers this was built with must be one the loaded runtime provides.
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api)
    throw Failure(std::string("the ONNX Runtime library loaded (") + base->GetVersionString() +
                  ") does not provide API version " + std::to_string(ORT_API_VERSION) +
                  " of the headers shark_host was built with: build it against headers no newer than the runtime");
  Ort::InitApi(api);

  if (!fs::is_regular_file(args.model)) throw Failure("model file '" + args.model + "' does not exist");
  if (!fs::is_regular_file(args.library))
    throw Failure("custom-op library '" + args.library +
                  "' does not exist; python -c \"import shark_export; print(shark_export.ops.library_path())\" "
                  "prints where the installed package keeps it");
  if (!fs::is_directory(args.input_dir)) throw Failure("input directory '" + args.input_dir + "' does not exist");

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "shark_host");
  Ort::SessionOptions options;
  for (const auto& [key, value] : args.config) options.AddConfigEntry(("shark_export." + key).c_str(), value.c_str());
  if (args.threads > 0) {
    options.SetIntraOpNumThreads(args.threads);
    options.SetInterOpNumThreads(1);
  }
  try {
    options.RegisterCustomOpsLibrary(args.library.c_str());  // ORTCHAR_T is char on Linux and macOS
  } catch (const Ort::Exception& e) {
    throw Failure("could not load the custom-op library '" + args.library + "': " + e.what());
  }

  std::unique_ptr<Ort::Session> session;
  try {
    session = std::make_unique<Ort::Session>(env, args.model.c_str(), options);
  } catch (const Ort::Exception& e) {
    std::string what = e.what();
    std::fprintf(stderr, "shark_host: ONNX Runtime could not load '%s': %s\n", args.model.c_str(), what.c_str());
    if (is_missing_op_error(what)) print_missing_op_hint(args.library);
    return 1;
  }

  Ort::AllocatorWithDefaultOptions allocator;
  const size_t n_in = session->GetInputCount(), n_out = session->GetOutputCount();
  std::vector<std::string> input_names, output_names;
  for (size_t i = 0; i < n_in; ++i) input_names.emplace_back(session->GetInputNameAllocated(i, allocator).get());
  for (size_t i = 0; i < n_out; ++i) output_names.emplace_back(session->GetOutputNameAllocated(i, allocator).get());

  // Read every input; collect all problems before giving up.
  std::vector<std::string> problems;
  std::string known;
  for (const auto& n : input_names) known += (known.empty() ? "" : ", ") + n;
  for (const auto& entry : fs::directory_iterator(args.input_dir)) {
    const fs::path p = entry.path();
    if (p.extension() != ".npy") continue;
    const std::string stem = p.stem().string();
    if (std::find(input_names.begin(), input_names.end(), stem) == input_names.end())
      problems.push_back("input file '" + p.filename().string() + "' names no model input (the model's inputs: " + known + ")");
  }
  std::vector<Array> arrays(n_in);
  for (size_t i = 0; i < n_in; ++i) {
    const std::string& name = input_names[i];
    const fs::path file = fs::path(args.input_dir) / (name + ".npy");
    if (!fs::is_regular_file(file)) {
      problems.push_back("model input '" + name + "' has no file " + file.string());
      continue;
    }
    try {
      arrays[i] = read_npy(file);
    } catch (const Failure& f) {
      problems.push_back(f.what());
      continue;
    }
    Ort::TypeInfo info = session->GetInputTypeInfo(i);
    if (info.GetONNXType() != ONNX_TYPE_TENSOR) {
      problems.push_back("model input '" + name + "' is not a tensor; shark_host feeds tensors only");
      continue;
    }
    auto tensor_info = info.GetTensorTypeAndShapeInfo();
    const ONNXTensorElementDataType want = tensor_info.GetElementType();
    if (arrays[i].type->onnx != want) {
      problems.push_back("input '" + name + "': " + file.filename().string() + " holds " + arrays[i].type->name +
                         ", the model takes " + onnx_type_name(want));
      continue;
    }
    const std::vector<int64_t> dims = tensor_info.GetShape();
    bool ok = dims.size() == arrays[i].shape.size();
    for (size_t d = 0; ok && d < dims.size(); ++d) ok = dims[d] < 0 || dims[d] == arrays[i].shape[d];
    if (!ok)
      problems.push_back("input '" + name + "': " + file.filename().string() + " has shape " + shape_str(arrays[i].shape) +
                         ", the model takes " + shape_str(dims) + " (? = any size)");
  }
  if (!problems.empty()) {
    for (const auto& p : problems) std::fprintf(stderr, "shark_host: %s\n", p.c_str());
    return 1;
  }

  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> inputs;
  for (size_t i = 0; i < n_in; ++i) {
    Array& a = arrays[i];
    if (a.data.empty()) a.data.reserve(8);  // an empty tensor still needs a non-null buffer
    inputs.push_back(Ort::Value::CreateTensor(cpu, a.data.data(), a.data.size(), a.shape.data(), a.shape.size(),
                                              a.type->onnx));
  }
  std::vector<const char*> in_ptrs, out_ptrs;
  for (const auto& n : input_names) in_ptrs.push_back(n.c_str());
  for (const auto& n : output_names) out_ptrs.push_back(n.c_str());

  std::vector<Ort::Value> outputs;
  try {
    outputs = session->Run(Ort::RunOptions{nullptr}, in_ptrs.data(), inputs.data(), n_in, out_ptrs.data(), n_out);
  } catch (const Ort::Exception& e) {
    throw Failure(std::string("ONNX Runtime failed to run the model: ") + e.what());
  }

  if (!args.output_dir.empty()) fs::create_directories(args.output_dir);
  for (size_t i = 0; i < n_out; ++i) {
    const std::string& name = output_names[i];
    if (!outputs[i].IsTensor()) throw Failure("output '" + name + "' is not a tensor; shark_host writes tensors only");
    auto info = outputs[i].GetTensorTypeAndShapeInfo();
    const DType* type = type_of_onnx(info.GetElementType());
    if (!type) throw Failure("output '" + name + "' has " + onnx_type_name(info.GetElementType()) + ", which shark_host cannot write");
    const std::vector<int64_t> shape = info.GetShape();
    const size_t count = info.GetElementCount();
    const auto* data = static_cast<const uint8_t*>(outputs[i].GetTensorRawData());
    if (!args.output_dir.empty()) {
      const fs::path file = fs::path(args.output_dir) / (name + ".npy");
      write_npy(file, *type, shape, data, count * type->size);
      std::printf("%s %s %s -> %s\n", name.c_str(), type->name, shape_str(shape).c_str(), file.string().c_str());
    } else {
      std::printf("%s %s %s\n", name.c_str(), type->name, shape_str(shape).c_str());
      for (size_t k = 0; k < count; ++k) print_value(*type, data + k * type->size);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  if (const char* env = std::getenv("SHARK_EXPORT_LIBRARY")) args.library = env;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "-h" || a == "--help") {
        std::printf("%s", kUsage);
        return 0;
      } else if (a == "--library") {
        args.library = value("--library");
      } else if (a == "--threads") {
        const std::string v = value("--threads");
        char* end = nullptr;
        const long n = std::strtol(v.c_str(), &end, 10);
        if (*end != '\0' || n < 1) return usage_error("--threads must be a positive integer, got '" + v + "'");
        args.threads = static_cast<int>(n);
      } else if (a == "--config") {
        const std::string v = value("--config");
        const size_t eq = v.find('=');
        if (eq == std::string::npos || eq == 0) return usage_error("--config takes KEY=VALUE, got '" + v + "'");
        args.config.emplace_back(v.substr(0, eq), v.substr(eq + 1));
      } else if (a.size() > 1 && a[0] == '-') {
        return usage_error("unknown option " + a);
      } else {
        positional.push_back(a);
      }
    } catch (const std::invalid_argument& e) {
      return usage_error(e.what());
    }
  }
  if (positional.size() < 2 || positional.size() > 3) return usage_error("expected MODEL.onnx INPUT_DIR [OUTPUT_DIR]");
  args.model = positional[0];
  args.input_dir = positional[1];
  if (positional.size() == 3) args.output_dir = positional[2];
  if (args.library.empty())
    return usage_error(
        "no custom-op library: pass --library PATH or set SHARK_EXPORT_LIBRARY (python -c \"import shark_export; "
        "print(shark_export.ops.library_path())\" prints where the installed package keeps it)");

  try {
    return run(args);
  } catch (const Failure& e) {
    std::fprintf(stderr, "shark_host: %s\n", e.what());
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "shark_host: ONNX Runtime error: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shark_host: %s\n", e.what());
  }
  return 1;
}
