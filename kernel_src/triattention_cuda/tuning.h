// SPDX-License-Identifier: Apache-2.0
// Launch-shape overrides of the CUDA/ROCm ops, so one build can compare launch shapes on a GPU
// (benchmarks/bench_kernels.py --tune) and reach the code paths not yet measured (staged through shared memory).
// Read by the host entries from TRIATTENTION_CUDA_TUNE, e.g. "score_waves=2,score_stages=4,compact_slice=256,
// compact_stages=3"; unset or 0 means the built-in choice. Plain C++ (no CUDA, no torch) so it is tested with the
// host compiler alone.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace triattention {
namespace cuda {

struct Tuning {
  int score_waves = 0;       // score_keys fast path: waves of resident blocks per launch (built-in: 1)
  int score_stages = 0;      // score_keys fast path, 16-bit keys, sm_80+: 2..8 = keys staged through that many
                             // cp.async steps of shared memory; 0 = two register buffers (built-in)
  int compact_slice = 0;     // compact_: column slice in bytes, a power of two in [16, 1024] (built-in: 64 or 32)
  int compact_pipeline = 0;  // compact_: 1 = load the next tile before storing this one (built-in: 0)
  int compact_stages = 0;    // compact_, 16-byte units, sm_80+: 2..8 = tiles staged through that many cp.async
                             // shared-memory tiles (32 KB each; fewer if they do not fit); 0 = registers (built-in)
};

// Parses "key=value[,key=value...]" into `t`. Returns "" or the message naming the bad part and the accepted form.
inline std::string parse_tuning(const char* text, Tuning& t) {
  static const char* kForm =
      " (expected comma-separated score_waves=1..16, score_stages=0|2..8, compact_slice=16|32|..|1024, "
      "compact_pipeline=0|1, compact_stages=0|2..8)";
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
    } else if (key == "score_stages" && number && (value == 0 || (value >= 2 && value <= 8))) {
      t.score_stages = static_cast<int>(value);
    } else if (key == "compact_slice" && number && value >= 16 && value <= 1024 && (value & (value - 1)) == 0) {
      t.compact_slice = static_cast<int>(value);
    } else if (key == "compact_pipeline" && number && (value == 0 || value == 1)) {
      t.compact_pipeline = static_cast<int>(value);
    } else if (key == "compact_stages" && number && (value == 0 || (value >= 2 && value <= 8))) {
      t.compact_stages = static_cast<int>(value);
    } else {
      return "TRIATTENTION_CUDA_TUNE: bad setting '" + item + "'" + kForm;
    }
  }
  return "";
}

}  // namespace cuda
}  // namespace triattention
