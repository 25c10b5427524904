// SPDX-License-Identifier: Apache-2.0
// Launch-shape overrides of the CUDA/ROCm ops, so one build can compare launch shapes on a GPU
// (benchmarks/bench_kernels.py --tune) and reach the code paths not yet measured (staged through shared memory,
// chunked compaction). Read by the host entries from TRIATTENTION_CUDA_TUNE, e.g. "score_waves=2,score_stages=4,
// compact_slice=256,compact_stages=3"; a setting left out keeps its built-in choice. Plain C++ (no CUDA, no torch)
// so it is tested with the host compiler alone.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace triattention {
namespace cuda {

// The built-in launch choices: the fastest the GPU runs measured (README); adopting a measured winner is changing
// its constant here. compact_slice's built-in depends on the launch (compact.cu: 64 bytes, 32 with few row sets).
constexpr int kBuiltinScoreWaves = 1;       // score_keys fast path: waves of resident blocks per launch
constexpr int kBuiltinScoreStages = 1;      // 1: two register buffers; 2..8: keys staged through that many cp.async
                                            // steps of shared memory (16-bit keys, sm_80+)
constexpr int kBuiltinCompactPipeline = 0;  // compact_: 1 = load the next tile before storing this one
constexpr int kBuiltinCompactStages = 1;    // 1: register tiles; 2..8: tiles staged through that many cp.async
                                            // shared-memory tiles of 32 KB (16-byte units, sm_80+; fewer if too big)
constexpr int kBuiltinCompactChunk = 0;     // 0: column slices (compact.cu); 4096..65536: blocks own chunks of that
                                            // many bytes of whole rows, split along j (compact_chunked.cu)

struct Tuning {  // -1: not set, the built-in choice
  int score_waves = -1;       // 1..16
  int score_stages = -1;      // 1..8
  int compact_slice = -1;     // column slice in bytes, a power of two in [16, 1024]
  int compact_pipeline = -1;  // 0 | 1
  int compact_stages = -1;    // 1..8
  int compact_chunk = -1;     // 0, or chunk bytes: a power of two in [4096, 65536]
};

inline int or_builtin(int value, int builtin) { return value >= 0 ? value : builtin; }

// Parses "key=value[,key=value...]" into `t`. Returns "" or the message naming the bad part and the accepted form.
inline std::string parse_tuning(const char* text, Tuning& t) {
  static const char* kForm =
      " (expected comma-separated score_waves=1..16, score_stages=1..8, compact_slice=16|32|..|1024, "
      "compact_pipeline=0|1, compact_stages=1..8, compact_chunk=0|4096|8192|..|65536)";
  std::string s = text ? text : "";
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    char* stop = nullptr;
    const long value = eq == std::string::npos ? -1 : std::strtol(item.c_str() + eq + 1, &stop, 10);
    const bool number = eq != std::string::npos && eq + 1 < item.size() && stop && *stop == '\0';
    if (key == "score_waves" && number && value >= 1 && value <= 16) {
      t.score_waves = static_cast<int>(value);
    } else if (key == "score_stages" && number && value >= 1 && value <= 8) {
      t.score_stages = static_cast<int>(value);
    } else if (key == "compact_slice" && number && value >= 16 && value <= 1024 && (value & (value - 1)) == 0) {
      t.compact_slice = static_cast<int>(value);
    } else if (key == "compact_pipeline" && number && (value == 0 || value == 1)) {
      t.compact_pipeline = static_cast<int>(value);
    } else if (key == "compact_stages" && number && value >= 1 && value <= 8) {
      t.compact_stages = static_cast<int>(value);
    } else if (key == "compact_chunk" && number &&
               (value == 0 || (value >= 4096 && value <= 65536 && (value & (value - 1)) == 0))) {
      t.compact_chunk = static_cast<int>(value);
    } else {
      return "TRIATTENTION_CUDA_TUNE: bad setting '" + item + "'" + kForm;
    }
  }
  return "";
}

}  // namespace cuda
}  // namespace triattention
