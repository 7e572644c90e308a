// One pass over a file by several threads (file_pass.h). SHA-256 comes from OpenSSL's libcrypto, found at
// run time: Node exports it (the addon runs inside node), otherwise libcrypto.so.3 is opened. Nothing links
// against it, so the runtime loads without it and only a hashed pass fails, saying why.
#include "file_pass.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace tsllm {

namespace {

using Sha256Fn = unsigned char* (*)(const unsigned char*, size_t, unsigned char*);

Sha256Fn find_sha256() {
  static Sha256Fn fn = [] {
    void* f = dlsym(RTLD_DEFAULT, "SHA256");
    for (const char* lib : {"libcrypto.so.3", "libcrypto.so"}) {
      if (f) break;
      if (void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL)) f = dlsym(h, "SHA256");
    }
    return reinterpret_cast<Sha256Fn>(f);
  }();
  return fn;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// O_DIRECT needs the buffer, file offset and length aligned to the logical block size (512 or 4096).
constexpr uint64_t kAlign = 4096;
uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

struct Mapping {
  void* p = MAP_FAILED;
  size_t n = 0;
  ~Mapping() {
    if (p != MAP_FAILED) ::munmap(p, n);
  }
};

// Reads as much of [begin, begin + len) as O_DIRECT gives, into buf; returns the bytes read. Stops (and
// clears `ok` when the file system refuses O_DIRECT reads, or the buffer cannot take them) at the first
// error or unaligned short read: the page cache serves what is left.
uint64_t read_direct(int fd, char* buf, uint64_t begin, uint64_t len, std::atomic<bool>& ok) {
  const uint64_t want = align_up(len);
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, buf + got, size_t(want - got), off_t(begin + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno == EINVAL || errno == EFAULT || errno == EOPNOTSUPP) ok = false;
      break;
    }
    if (n == 0) break;
    got += uint64_t(n);
    if (got % kAlign) break;
  }
  return std::min(got, len);
}

// Chunks read by the readers wait here for the hasher threads, so a reader's next read never waits for a hash:
// a cold pass keeps one O_DIRECT read in flight per reader all the time (hashing in the reader left it idle
// for the hash of each chunk), and by the time a reader comes back to a buffer its hash is long done.
class HashQueue {
 public:
  struct Job {
    const unsigned char* p;
    size_t n;
    uint8_t* out;
    int buffer;  // 2 * reader + slot
  };
  explicit HashQueue(int buffers) : busy_(size_t(buffers), 0) {}
  void push(const Job& j) {
    std::lock_guard<std::mutex> g(mu_);
    busy_[size_t(j.buffer)] = 1;
    jobs_.push_back(j);
    work_.notify_one();
  }
  // The next job, or false once closed and empty.
  bool pop(Job& j) {
    std::unique_lock<std::mutex> l(mu_);
    work_.wait(l, [&] { return !jobs_.empty() || closed_; });
    if (jobs_.empty()) return false;
    j = jobs_.front();
    jobs_.pop_front();
    return true;
  }
  void done(int buffer) {
    std::lock_guard<std::mutex> g(mu_);
    busy_[size_t(buffer)] = 0;
    done_.notify_all();
  }
  // Blocks until the buffer's hash (if one is queued or running) is finished.
  void wait(int buffer) {
    std::unique_lock<std::mutex> l(mu_);
    done_.wait(l, [&] { return !busy_[size_t(buffer)]; });
  }
  void close() {
    std::lock_guard<std::mutex> g(mu_);
    closed_ = true;
    work_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable work_, done_;
  std::deque<Job> jobs_;
  std::vector<char> busy_;
  bool closed_ = false;
};

}  // namespace

FilePassStats run_file_pass(const std::string& path, uint64_t size, const FilePassOptions& o, FilePassSink& sink) {
  FilePassStats st;
  const double t_start = now_s();
  const uint64_t chunk = o.chunk_bytes;
  if (chunk == 0 || chunk > (uint64_t(1) << 30)) throw std::runtime_error("hash chunk size must be in (0, 1 GiB]");
  const uint64_t nchunks = (size + chunk - 1) / chunk;
  Sha256Fn sha256 = nullptr;
  if (o.digests) {
    sha256 = find_sha256();
    if (!sha256)
      throw std::runtime_error(
          "content hash check needs OpenSSL's SHA256 (libcrypto.so.3), not found in this process; load with "
          "--no-verify or install OpenSSL");
  }
  int want = o.threads;
  if (want <= 0) want = int(std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
  const int nthreads = int(std::min<uint64_t>(uint64_t(std::min(want, kMaxPassThreads)), std::max<uint64_t>(nchunks, 1)));
  st.threads = nthreads;
  const int direct_mode = o.direct;

  Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) throw std::runtime_error(std::string("cannot open: ") + std::strerror(errno));
  ::posix_fadvise(fd.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // O_DIRECT for chunks the page cache does not hold (refused by some file systems: then none).
  Fd dfd;
  if (direct_mode != 0 && chunk % kAlign == 0) dfd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  std::atomic<bool> direct_ok{dfd.fd >= 0};
  // Which pages are cached: mincore over a mapping of the file (mapping reads nothing).
  Mapping map;
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  if (direct_ok && direct_mode < 0 && size > 0) {
    map.n = size_t(size);
    map.p = ::mmap(nullptr, map.n, PROT_READ, MAP_SHARED, fd.fd, 0);
  }
  auto cached = [&](uint64_t begin, uint64_t len, std::vector<unsigned char>& vec) {
    if (direct_mode == 1) return false;
    if (map.p == MAP_FAILED || begin % page) return true;
    vec.resize(size_t((len + page - 1) / page));
    if (::mincore(static_cast<char*>(map.p) + begin, size_t(len), vec.data()) != 0) return true;
    return std::all_of(vec.begin(), vec.end(), [](unsigned char c) { return (c & 1) != 0; });
  };

  std::atomic<uint64_t> next{0}, direct_bytes{0}, cached_bytes{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::string first_err;
  std::vector<double> t_read(size_t(nthreads), 0), t_wait(size_t(nthreads), 0);
  auto set_err = [&](const std::string& m) {
    std::lock_guard<std::mutex> g(mu);
    if (first_err.empty()) first_err = m;
    stop = true;
  };
  const uint64_t buf_bytes = align_up(std::min(chunk, std::max<uint64_t>(size, 1)));

  // Readers read chunks and hand them to the sink; hashers (as many, when hashing) hash them meanwhile.
  const int nhashers = sha256 ? nthreads : 0;
  HashQueue hq(2 * nthreads);
  std::vector<double> t_hash(size_t(std::max(nhashers, 1)), 0);
  auto hash_work = [&](int h) {
    HashQueue::Job j;
    while (hq.pop(j)) {
      const double t0 = now_s();
      sha256(j.p, j.n, j.out);
      t_hash[size_t(h)] += now_s() - t0;
      hq.done(j.buffer);
    }
  };
  auto work = [&](int t) {
    // The sink frees its buffers in finish(): no hash may still be reading them.
    auto drain = [&] {
      hq.wait(2 * t);
      hq.wait(2 * t + 1);
    };
    try {
      sink.start(t, buf_bytes);
      std::vector<unsigned char> vec;
      int slot = 0;
      while (!stop) {
        const uint64_t k = next.fetch_add(1);
        if (k >= nchunks) break;
        const uint64_t begin = k * chunk, len = std::min(chunk, size - begin);
        if (!sha256 && !sink.wants(begin, begin + len)) continue;
        const double t0 = now_s();
        sink.wait(t, slot);
        hq.wait(2 * t + slot);
        const double t1 = now_s();
        char* buf = sink.buffer(t, slot);
        uint64_t got = direct_ok && !cached(begin, len, vec) ? read_direct(dfd.fd, buf, begin, len, direct_ok) : 0;
        direct_bytes += got;
        cached_bytes += len - got;
        while (got < len) {
          ssize_t n = ::pread(fd.fd, buf + got, size_t(len - got), off_t(begin + got));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0)
            throw std::runtime_error("short read at byte " + std::to_string(begin + got) +
                                     (n < 0 ? std::string(": ") + std::strerror(errno) : std::string(" (end of file)")));
          got += uint64_t(n);
        }
        const double t2 = now_s();
        // The sink's copy of this buffer and its hash run while the next chunk is read into the other one.
        sink.consume(t, slot, begin, len);
        if (sha256) hq.push({reinterpret_cast<const unsigned char*>(buf), size_t(len), o.digests + 32 * k, 2 * t + slot});
        const double t3 = now_s();
        t_wait[size_t(t)] += (t1 - t0) + (t3 - t2);
        t_read[size_t(t)] += t2 - t1;
        slot ^= 1;
      }
      drain();
      sink.finish(t);
    } catch (const std::exception& e) {
      set_err(e.what());
      drain();
      try {
        sink.finish(t);
      } catch (...) {
      }
    }
  };
  std::vector<std::thread> hashers, threads;
  for (int h = 0; h < nhashers; h++) hashers.emplace_back(hash_work, h);
  for (int i = 1; i < nthreads; i++) threads.emplace_back(work, i);
  work(0);
  for (auto& th : threads) th.join();
  hq.close();
  for (auto& th : hashers) th.join();
  if (!first_err.empty()) throw std::runtime_error(first_err);
  st.direct = direct_ok;  // false also when the file system refused the first O_DIRECT read
  st.direct_bytes = direct_bytes;
  st.cached_bytes = cached_bytes;
  for (int i = 0; i < nthreads; i++) {
    st.read_s += t_read[size_t(i)];
    st.wait_s += t_wait[size_t(i)];
  }
  for (double h : t_hash) st.hash_s += h;
  st.wall_s = now_s() - t_start;
  return st;
}

std::string combine_chunk_digests(const uint8_t* digests, uint64_t num_chunks) {
  Sha256Fn sha256 = find_sha256();
  if (!sha256) throw std::runtime_error("OpenSSL's SHA256 (libcrypto.so.3) is not in this process");
  unsigned char out[32];
  sha256(digests, size_t(num_chunks) * 32, out);
  std::string hex;
  for (unsigned char c : out) {
    static const char* d = "0123456789abcdef";
    hex += d[c >> 4];
    hex += d[c & 15];
  }
  return hex;
}

std::string describe(const FilePassStats& s) {
  const double bytes = double(s.direct_bytes + s.cached_bytes);
  char line[512];
  std::snprintf(line, sizeof(line),
                "%.2f GiB in %.2f s (%.2f GB/s), %d threads, %.2f GiB direct / %.2f GiB cached%s; thread-seconds: "
                "read %.2f, hash %.2f, waiting for buffers %.2f",
                bytes / double(1 << 30), s.wall_s, s.wall_s > 0 ? bytes / 1e9 / s.wall_s : 0.0, s.threads,
                double(s.direct_bytes) / double(1 << 30), double(s.cached_bytes) / double(1 << 30),
                s.direct ? "" : " (O_DIRECT off or refused here)", s.read_s, s.hash_s, s.wait_s);
  return line;
}

}  // namespace tsllm
