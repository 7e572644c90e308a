// engine_check: runs the native loader's header checks (src/runtime/engine_file.cc) on rank files, without a GPU
// or CUDA. Prints "ok <file>: <nodes> nodes, <weights> weights, arena <bytes>" or the loader's one-line error,
// exactly as tsllm_load would report it; exit status 1 if any file fails.
//   c++ -std=c++17 -O1 -I native/src -o engine_check native/tools/engine_check.cc
//       native/src/runtime/engine_file.cc native/src/runtime/json.cc
#include <cstdio>
#include <exception>

#include "runtime/engine_file.h"

int main(int argc, char** argv) {
  int bad = 0;
  for (int i = 1; i < argc; i++) {
    try {
      const tsllm::EngineDesc d = tsllm::read_engine_header(argv[i]);
      std::printf("ok %s: %zu nodes, %zu weights, arena %llu\n", argv[i], d.nodes.size(), d.weights.size(),
                  (unsigned long long)d.arena_bytes);
    } catch (const std::exception& e) {
      std::printf("error %s\n", e.what());
      bad = 1;
    }
  }
  return bad;
}
