// ort_runner: runs ONNX models with ONNX Runtime and the shark-export custom-op library, reading the runs
// from a manifest and writing every output (or the error message) for a script to compare. It is what
// tools/check_aarch64.sh cross-compiles for linux-aarch64 and runs under qemu-user, linked against the
// libonnxruntime.so of ONNX Runtime's aarch64 wheel; nothing in it is specific to aarch64.
//
// Usage: ort_runner OPS_LIBRARY MANIFEST OUT_DIR
//
// MANIFEST (text, one item per line; paths relative to the manifest's directory; names without spaces):
//   run NAME MODEL THREADS N_INPUTS         a run of MODEL with THREADS intra-op threads (0 = ORT's default)
//   cfg KEY VALUE                           (optional, before the inputs) a session config entry
//   in NAME ELEM_TYPE RANK DIM... FILE      N_INPUTS of these: raw little-endian data; ELEM_TYPE is the ONNX
//                                           element type (1 float, 2 uint8, 6 int32, 7 int64, 10 float16,
//                                           13 uint64)
//   '#' starts a comment line.
// Runs of the same MODEL, THREADS and config share one session (created on first use, like a server).
//
// OUT_DIR/results.txt gets one line per run, written as soon as the run ends:
//   NAME ok N_OUTPUTS   followed by one line per output:  out ELEM_TYPE RANK DIM... FILE (in OUT_DIR)
//   NAME error MESSAGE  (the ORT error text, newlines replaced by spaces)
// Exit status: 0 when every run produced a line (errors of the runs included), 2 on a bad manifest or I/O
// error (with a message on stderr).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace {

struct Input {
  std::string name;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::string file;
};

struct Run {
  std::string name, model;
  int threads = 0;
  std::vector<std::pair<std::string, std::string>> config;
  std::vector<Input> inputs;
  int line = 0;
};

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

size_t element_size(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return 8;
    default: return 0;
  }
}

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::vector<Run> read_manifest(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open manifest " + path);
  const std::string base = dir_of(path) + "/";
  std::vector<Run> runs;
  size_t pending = 0;  // inputs still expected by the last run
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    std::istringstream ss(line);
    std::string word;
    if (!(ss >> word) || word[0] == '#') continue;
    const std::string where = path + ":" + std::to_string(lineno) + ": ";
    if (word == "run") {
      if (pending) fail(where + "run '" + runs.back().name + "' lacks " + std::to_string(pending) + " inputs");
      Run r;
      size_t n = 0;
      if (!(ss >> r.name >> r.model >> r.threads >> n)) fail(where + "expected: run NAME MODEL THREADS N_INPUTS");
      r.model = base + r.model;
      r.line = lineno;
      runs.push_back(std::move(r));
      pending = n;
    } else if (word == "cfg") {
      std::string key, value;
      if (runs.empty() || !(ss >> key >> value)) fail(where + "expected: cfg KEY VALUE after a run line");
      runs.back().config.emplace_back(key, value);
    } else if (word == "in") {
      if (!pending) fail(where + "an 'in' line that no run asked for");
      Input x;
      int type = 0, rank = 0;
      if (!(ss >> x.name >> type >> rank) || rank < 0) fail(where + "expected: in NAME ELEM_TYPE RANK DIM... FILE");
      x.type = static_cast<ONNXTensorElementDataType>(type);
      if (!element_size(x.type)) fail(where + "unsupported element type " + std::to_string(type));
      x.shape.resize(rank);
      for (auto& d : x.shape) {
        if (!(ss >> d) || d < 0) fail(where + "bad dimension");
      }
      if (!(ss >> x.file)) fail(where + "missing FILE");
      x.file = base + x.file;
      runs.back().inputs.push_back(std::move(x));
      --pending;
    } else {
      fail(where + "unknown item '" + word + "'");
    }
  }
  if (pending) fail(path + ": run '" + runs.back().name + "' lacks " + std::to_string(pending) + " inputs");
  return runs;
}

std::vector<char> read_file(const std::string& path, size_t expect) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path);
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() != expect) {
    fail(path + " has " + std::to_string(data.size()) + " bytes, its shape needs " + std::to_string(expect));
  }
  return data;
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

class Runner {
 public:
  // Log level FATAL: the failing runs are results (results.txt), not log lines.
  Runner(std::string library, std::string out_dir)
      : env_(ORT_LOGGING_LEVEL_FATAL, "ort_runner"), library_(std::move(library)), out_dir_(std::move(out_dir)) {}

  // One results line (and the output files) for run `r`; ORT errors become the run's result.
  std::string run(const Run& r, int index) {
    try {
      Ort::Session& session = session_for(r);
      std::vector<Ort::Value> values;
      std::vector<const char*> in_names;
      Ort::AllocatorWithDefaultOptions alloc;
      for (const Input& x : r.inputs) {
        size_t count = 1;
        for (int64_t d : x.shape) count *= static_cast<size_t>(d);
        const size_t bytes = count * element_size(x.type);
        const std::vector<char> data = read_file(x.file, bytes);
        Ort::Value v = Ort::Value::CreateTensor(alloc, x.shape.data(), x.shape.size(), x.type);
        if (bytes) std::memcpy(v.GetTensorMutableRawData(), data.data(), bytes);
        values.push_back(std::move(v));
        in_names.push_back(x.name.c_str());
      }
      const size_t n_out = session.GetOutputCount();
      std::vector<Ort::AllocatedStringPtr> out_name_ptrs;
      std::vector<const char*> out_names;
      for (size_t i = 0; i < n_out; ++i) {
        out_name_ptrs.push_back(session.GetOutputNameAllocated(i, alloc));
        out_names.push_back(out_name_ptrs.back().get());
      }
      std::vector<Ort::Value> outs = session.Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(),
                                                 values.size(), out_names.data(), out_names.size());
      std::ostringstream line;
      line << r.name << " ok " << outs.size() << "\n";
      for (size_t i = 0; i < outs.size(); ++i) {
        const auto info = outs[i].GetTensorTypeAndShapeInfo();
        const auto type = info.GetElementType();
        const std::vector<int64_t> shape = info.GetShape();
        const size_t bytes = info.GetElementCount() * element_size(type);
        if (!element_size(type)) fail("output " + std::to_string(i) + " has unsupported element type");
        const std::string file = "out" + std::to_string(index) + "_" + std::to_string(i) + ".bin";
        std::ofstream f(out_dir_ + "/" + file, std::ios::binary);
        if (bytes) f.write(static_cast<const char*>(outs[i].GetTensorRawData()), static_cast<std::streamsize>(bytes));
        if (!f) fail("cannot write " + out_dir_ + "/" + file);
        line << "out " << static_cast<int>(type) << " " << shape.size();
        for (int64_t d : shape) line << " " << d;
        line << " " << file << "\n";
      }
      return line.str();
    } catch (const Ort::Exception& e) {
      return r.name + " error " + one_line(e.what()) + "\n";
    }
  }

 private:
  Ort::Session& session_for(const Run& r) {
    std::string key = r.model + "|" + std::to_string(r.threads);
    for (const auto& kv : r.config) key += "|" + kv.first + "=" + kv.second;
    auto it = sessions_.find(key);
    if (it != sessions_.end()) return *it->second;
    Ort::SessionOptions so;
    for (const auto& kv : r.config) so.AddConfigEntry(kv.first.c_str(), kv.second.c_str());
    so.RegisterCustomOpsLibrary(library_.c_str());
    if (r.threads > 0) {
      so.SetIntraOpNumThreads(r.threads);
      so.SetInterOpNumThreads(1);
    }
    auto session = std::make_unique<Ort::Session>(env_, r.model.c_str(), so);  // throws: the run's error
    return *sessions_.emplace(key, std::move(session)).first->second;
  }

  Ort::Env env_;
  std::string library_, out_dir_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s OPS_LIBRARY MANIFEST OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::vector<Run> runs = read_manifest(argv[2]);
    Runner runner(argv[1], argv[3]);
    const std::string results_path = std::string(argv[3]) + "/results.txt";
    std::FILE* results = std::fopen(results_path.c_str(), "w");
    if (!results) fail("cannot write " + results_path);
    for (size_t i = 0; i < runs.size(); ++i) {
      const std::string line = runner.run(runs[i], static_cast<int>(i));
      std::fputs(line.c_str(), results);
      std::fflush(results);  // a crash in a later run keeps the lines before it
    }
    std::fclose(results);
    std::printf("ort_runner: %zu runs, ONNX Runtime %s\n", runs.size(), Ort::GetVersionString().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ort_runner: %s\n", e.what());
    return 2;
  }
  return 0;
}
