// test_step_choice: the step tuner's candidate lists (runtime/step_choice.h), host only. Which variants a shape
// offers decides what the step tuner can ever pick: near_candidates' `within` and `close`, and StepTuned::offer's
// `most` (Tunables::gemm_step offers a cuBLASLt shape's 3 fastest others, not every one of its dozens within 10 %).
#pragma once
#include <string>
#include <vector>

#include "../src/runtime/step_choice.h"

static void test_step_choice() {
  using Times = std::vector<std::pair<int, float>>;
  auto same = [](const std::vector<int>& a, const std::vector<int>& b) { return a == b; };
  auto show = [](const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += std::to_string(x) + " ";
    return s;
  };
  // Pick 0 at 1.0 ms: 1.05 and 1.10 are within 10 %, 1.20 is not; the pick itself is never a candidate.
  const Times t = {{0, 1.0f}, {1, 1.2f}, {2, 1.05f}, {3, 1.1f}};
  std::vector<int> c = tsllm::near_candidates(t, 0, 0.1f);
  report(same(c, {2, 3}), "step_choice: near_candidates within 10 %", 0, show(c));
  c = tsllm::near_candidates(t, 7, 0.1f);
  report(c.empty(), "step_choice: a pick that was never timed offers nothing", 0, show(c));
  // A fusion decision (close >= 0): of the other side (-1, the unfused pair) only its fastest, of the pick's own
  // side those within `close`.
  const Times f = {{-1, 1.02f}, {0, 1.0f}, {1, 1.01f}, {2, 1.08f}};
  c = tsllm::near_candidates(f, 0, 0.15f, 0.03f);
  report(same(c, {-1, 1}), "step_choice: fusion candidates (close 3 %)", 0, show(c));

  // offer with most: the fastest `most` candidates alone, in lone-time order, whatever order they were timed in.
  struct K {
    int k;
    bool operator==(const K& o) const { return k == o.k; }
  };
  tsllm::StepTuned<K> st;
  const float ms[] = {1.0f, 1.09f, 1.01f, 1.2f, 1.03f, 1.02f};
  for (int v = 0; v < 6; v++) st.timed(K{1}, v, ms[v]);
  st.record(true);
  st.note(K{1});
  st.note(K{2});  // looked up, never timed: not offered
  st.record(false);
  int put = -1;
  auto get = [](const K&, int* pick) {
    *pick = 0;
    return true;
  };
  auto set = [&](const K&, int v) { put = v; };
  auto name = [](const K& k) { return "key " + std::to_string(k.k); };
  std::vector<tsllm::StepChoice> out;
  st.offer(&out, 0.1f, -1.f, get, set, name, 3);
  report(out.size() == 1 && same(out[0].candidates, {2, 5, 4}), "step_choice: offer keeps the 3 fastest", 0,
         out.empty() ? "none" : show(out[0].candidates));
  out.clear();
  st.offer(&out, 0.1f, -1.f, get, set, name);
  report(out.size() == 1 && same(out[0].candidates, {1, 2, 4, 5}), "step_choice: offer without most keeps all", 0,
         out.empty() ? "none" : show(out[0].candidates));
  // Once set with done, a key is never offered again.
  out[0].set(5, true);
  report(put == 5, "step_choice: set puts the variant", 0, std::to_string(put));
  out.clear();
  st.offer(&out, 0.1f, -1.f, get, set, name, 3);
  report(out.empty(), "step_choice: a step-tuned key is not offered again", 0, std::to_string(out.size()));
}
