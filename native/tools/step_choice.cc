// step_choice: the step tuner's candidate rules (src/runtime/step_choice.h: near_candidates, StepTuned) driven
// from a script on stdin, without a GPU, so test/native-step-choice.test.ts checks which variants a decode graph's
// step tuning would try and that a decided key is never offered again.
//   c++ -std=c++17 -I native/src -o step_choice native/tools/step_choice.cc
// One command a line (keys and variants are integers, -1 a fusion's unfused pair):
//   near PICK WITHIN CLOSE V:MS ...   -> "near A B ..." (near_candidates; CLOSE -1: a plain gemv pick)
//   record 1|0                       StepTuned::record
//   note KEY                         StepTuned::note
//   timed KEY V MS                   StepTuned::timed
//   pick KEY V                       the runner's current pick for KEY (the map offer_map reads and sets write)
//   offer WITHIN CLOSE [MOST]        -> "choice KEY pick P: A B ..." a line per StepChoice (offer_map; MOST: at
//                                       most that many candidates, the fastest alone), then "offered N"
//   set KEY V done|trial             the last offer's choice for KEY: set(V, done)
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/step_choice.h"

int main() {
  tsllm::StepTuned<int> st;
  std::map<int, int> picks;
  std::vector<tsllm::StepChoice> last;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    if (!(in >> cmd)) continue;
    if (cmd == "near") {
      int pick;
      float within, close;
      in >> pick >> within >> close;
      std::vector<std::pair<int, float>> times;
      std::string t;
      while (in >> t) times.emplace_back(std::stoi(t.substr(0, t.find(':'))), std::stof(t.substr(t.find(':') + 1)));
      std::printf("near");
      for (int v : tsllm::near_candidates(times, pick, within, close)) std::printf(" %d", v);
      std::printf("\n");
    } else if (cmd == "record") {
      int on;
      in >> on;
      st.record(on != 0);
    } else if (cmd == "note") {
      int k;
      in >> k;
      st.note(k);
    } else if (cmd == "timed") {
      int k, v;
      float ms;
      in >> k >> v >> ms;
      st.timed(k, v, ms);
    } else if (cmd == "pick") {
      int k, v;
      in >> k >> v;
      picks[k] = v;
    } else if (cmd == "offer") {
      float within, close;
      int most = 0;
      in >> within >> close;
      if (!(in >> most)) most = 0;
      last.clear();
      st.offer_map(&last, within, close, picks, [](int k) { return std::to_string(k); }, most);
      for (const auto& c : last) {
        std::printf("choice %s pick %d:", c.name.c_str(), c.pick);
        for (int v : c.candidates) std::printf(" %d", v);
        std::printf("\n");
      }
      std::printf("offered %zu\n", last.size());
    } else if (cmd == "set") {
      int k, v;
      std::string how;
      in >> k >> v >> how;
      for (const auto& c : last)
        if (c.name == std::to_string(k)) c.set(v, how == "done");
    } else {
      std::fprintf(stderr, "step_choice: unknown command \"%s\"\n", cmd.c_str());
      return 2;
    }
  }
  for (const auto& [k, v] : picks) std::printf("pick %d %d\n", k, v);
  return 0;
}
