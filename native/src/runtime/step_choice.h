// Step tuning (step.cc step_tune, Tunables::step_tune): a decode graph's gemv picks and decode fusion decisions
// decided again by timing the graph. Why: the tuners time each call alone (L2 flushed, no predecessor), and in the
// step a gemv's start overlaps its predecessor's end; near-equal lone times there ranked variants the step did not
// (H200, Llama-2-7B FP8 bs 1: down variant 5 0.0217 ms alone against 3's 0.0225, yet TPOT 2.773 ms with 5 and 2.672
// with 3, session 25 run 5; fp16 bs 1: the o_proj norm tail fused in one load, 0.0192 against 0.0196 ms alone, and
// not in the next, session 25 run 7).
// A runner records the keys its picks are looked up for while a step is captured (StepTuned::note), then offers
// each key not step-tuned yet with the variants its lone timing put within `within` of the pick's time.
#pragma once
#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace tsllm {

struct StepChoice {
  std::string name;  // the shape, for the log
  int pick;          // the variant (a fusion decision: the fused variant, or -1 for the unfused pair)
  std::vector<int> candidates;
  // The shape's pick from now on; done: step-tuned, never offered again.
  std::function<void(int variant, bool done)> set;
};

// The variants of `times` (variant, lone ms) within `within` of the pick's time, the pick left out; empty when the
// pick was not timed. With `close` >= 0 (a fusion decision: -1 the unfused pair, the rest fused variants) only the
// fastest of the other side, and of the pick's own side those within `close`: the step decides fused or not, and
// among fused variants lone timings err less (H200, Llama-2-7B fp16 bs 1, session 26 run 2: every fused variant
// within 15 % tried, 33 recaptures of the step's 64 and 3.3 s of step tuning, and no fused variant replaced
// another).
inline std::vector<int> near_candidates(const std::vector<std::pair<int, float>>& times, int pick, float within,
                                        float close = -1.f) {
  float mine = -1.f, other = -1.f;
  int other_v = 0;
  for (const auto& [v, ms] : times) {
    if (v == pick) mine = ms;
    if ((v < 0) != (pick < 0) && (other < 0.f || ms < other)) other = ms, other_v = v;
  }
  std::vector<int> out;
  if (mine < 0.f) return out;
  for (const auto& [v, ms] : times) {
    if (v == pick || ms > mine * (1.f + within)) continue;
    if (close < 0.f || ((v < 0) != (pick < 0) ? v == other_v : ms <= mine * (1.f + close))) out.push_back(v);
  }
  return out;
}

// near_candidates' `close` for the fusion decisions.
constexpr float kFusionClose = 0.03f;

// One kind of decision's step-tuning state in a runner (its plain gemv picks, or one kind of fusion decision): each
// key's lone times, the keys looked up since recording began, and those already step-tuned. Keys need only ==
// (a runner has a few dozen of them).
template <class Key>
class StepTuned {
 public:
  using Times = std::vector<std::pair<int, float>>;
  void record(bool on) {
    recording_ = on;
    if (on) seen_.clear();
  }
  void note(const Key& k) {
    if (recording_ && std::find(seen_.begin(), seen_.end(), k) == seen_.end()) seen_.push_back(k);
  }
  // Variant v of key k ran alone in ms (a fusion's unfused pair as variant -1).
  void timed(const Key& k, int v, float ms) {
    auto it = std::find_if(times_.begin(), times_.end(), [&](const auto& t) { return t.first == k; });
    if (it == times_.end()) it = times_.insert(times_.end(), {k, Times{}});
    it->second.emplace_back(v, ms);
  }
  // A StepChoice into *out for every key noted while recording, not step-tuned yet, with a pick (get(k, &pick)
  // true) and variants timed near it (near_candidates' within and close); its set calls put(k, v). name(k): the
  // log's name.
  // most > 0: only that many candidates, the fastest alone (a cuBLASLt shape has dozens within `within`, and each
  // costs a recapture and replays of a large step).
  template <class Get, class Put, class Name>
  void offer(std::vector<StepChoice>* out, float within, float close, Get get, Put put, Name name, int most = 0) {
    for (const Key& k : seen_) {
      if (std::find(done_.begin(), done_.end(), k) != done_.end()) continue;
      auto t = std::find_if(times_.begin(), times_.end(), [&](const auto& e) { return e.first == k; });
      StepChoice c;
      if (t == times_.end() || !get(k, &c.pick)) continue;
      c.candidates = near_candidates(t->second, c.pick, within, close);
      if (c.candidates.empty()) continue;
      if (most > 0 && int(c.candidates.size()) > most) {
        auto lone = [&](int v) {
          for (const auto& [tv, ms] : t->second)
            if (tv == v) return ms;
          return 0.f;
        };
        std::stable_sort(c.candidates.begin(), c.candidates.end(), [&](int a, int b) { return lone(a) < lone(b); });
        c.candidates.resize(size_t(most));
      }
      c.name = name(k);
      c.set = [this, k, put](int v, bool done) {
        put(k, v);
        if (done) done_.push_back(k);
      };
      out->push_back(std::move(c));
    }
  }
  // offer for decisions held in a map from Key to the pick (picks must outlive the choices).
  template <class Map, class Name>
  void offer_map(std::vector<StepChoice>* out, float within, float close, Map& picks, Name name, int most = 0) {
    offer(
        out, within, close,
        [&picks](const Key& k, int* pick) {
          auto it = picks.find(k);
          if (it == picks.end()) return false;
          *pick = it->second;
          return true;
        },
        [&picks](const Key& k, int v) { picks[k] = v; }, name, most);
  }

 private:
  bool recording_ = false;
  std::vector<Key> seen_, done_;
  std::vector<std::pair<Key, Times>> times_;
};

}  // namespace tsllm
