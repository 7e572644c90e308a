// Step tuning (step.cc step_tune, Tunables::step_tune): a decode graph's gemv picks decided again by timing the
// graph. Why: the tuners time each call alone (L2 flushed, no predecessor), and in the step a gemv's start overlaps
// its predecessor's end; near-equal lone times there ranked variants the step did not (H200, Llama-2-7B FP8 bs 1:
// down variant 5 0.0217 ms alone against 3's 0.0225, yet TPOT 2.773 ms with 5 and 2.672 with 3, session 25 run 5).
// A runner records the shapes its gemv picks are looked up for while a step is captured (record_keys), then offers
// each shape not step-tuned yet with the variants its lone timing put within `within` of the pick's time.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace tsllm {

struct StepChoice {
  std::string name;  // the shape, for the log
  int pick;
  std::vector<int> candidates;
  // The shape's pick from now on; done: step-tuned, never offered again.
  std::function<void(int variant, bool done)> set;
};

// The variants of `times` (variant, lone ms) within `within` of the pick's time, the pick left out; empty when the
// pick was not timed.
inline std::vector<int> near_candidates(const std::vector<std::pair<int, float>>& times, int pick, float within) {
  float mine = -1.f;
  for (const auto& [v, ms] : times)
    if (v == pick) mine = ms;
  std::vector<int> out;
  if (mine < 0.f) return out;
  for (const auto& [v, ms] : times)
    if (v != pick && ms <= mine * (1.f + within)) out.push_back(v);
  return out;
}

}  // namespace tsllm
