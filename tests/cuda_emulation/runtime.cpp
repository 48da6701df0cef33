// The host CUDA runtime declared in runtime.h: fibers, the block scheduler, the checks, and the
// control ops the Python side (backend.py) calls, registered as torch ops in the namespace
// fastadv_cuda_emulation.
#include "runtime.h"

#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <csetjmp>
#include <csignal>
#include <sys/mman.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

namespace fastadv_emu {
namespace {

// ---- fibers: a stack each, switched by saving callee-saved registers (x86-64) ----
#if defined(__x86_64__)
extern "C" void fastadv_emu_switch(void** save_sp, void* load_sp);
extern "C" void fastadv_emu_trampoline();
// System V: rbx, rbp, r12-r15, the x87 control word and MXCSR survive a call; everything else
// the compiler already saved around the call to fastadv_emu_switch.
asm(R"(
  .text
  .p2align 4
  .globl fastadv_emu_switch
  .hidden fastadv_emu_switch
  .type fastadv_emu_switch, @function
fastadv_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastadv_emu_switch, .-fastadv_emu_switch

  .p2align 4
  .globl fastadv_emu_trampoline
  .hidden fastadv_emu_trampoline
  .type fastadv_emu_trampoline, @function
fastadv_emu_trampoline:
  movq %r12, %rdi
  andq $-16, %rsp
  callq *%r13
  ud2
  .size fastadv_emu_trampoline, .-fastadv_emu_trampoline
)");
#endif

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kGuardBytes = 4096;

enum class State { kRunnable, kAtBarrier, kAtShuffle, kDone, kFailed };

struct Fiber {
  char* stack = nullptr;  // kGuardBytes of PROT_NONE, then the stack
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  State state = State::kRunnable;
  uint3 tid{0, 0, 0};
  int linear = 0;
  // Where it waits, and a shuffle's operands and result.
  const char* file = nullptr;
  int line = 0;
  ShuffleKind kind = ShuffleKind::kIndex;
  bool sync_only = false;
  unsigned mask = 0;
  int operand = 0;
  int width = 32;
  uint64_t value = 0;
  uint64_t result = 0;
};

struct Options {
  std::string order = "forward";
  uint64_t seed = 0;
  std::vector<int64_t> blocks;  // empty: every block; negative: from the end
  bool execute = true;
  int device = 0;  // the current device: 0 an H100 SXM, 1 a GPU of 2 multiprocessors (see below)
};

struct LaunchRecord {
  std::string kernel, site;
  int64_t grid[3], block[3];
  int64_t blocks_run;
};

struct Emulator {
  std::recursive_mutex mutex;  // one op at a time: the scheduler state is global
  Options options;
  int64_t current_stream = 0;
  int guard_depth = 0;
  bool pending_check = false;
  LaunchSite pending_site{};
  std::vector<LaunchRecord> records;
  uint64_t generation = 0;

  // The block being run.
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  const LaunchSite* site = nullptr;
  std::string error;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_context;
#endif
};

Emulator& emu() {
  static Emulator instance;
  return instance;
}

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.tid.x << ", " << f.tid.y << ", " << f.tid.z << ") of block (" << blockIdx.x << ", "
    << blockIdx.y << ", " << blockIdx.z << ")";
  return s.str();
}

std::string site_text(const LaunchSite& site) {
  std::ostringstream s;
  s << site.kernel << " launched at " << site.file << ":" << site.line;
  return s.str();
}

// ---- switching ----
void yield_to_scheduler() {
  Emulator& e = emu();
  Fiber* f = e.current;
#if defined(__x86_64__)
  fastadv_emu_switch(&f->sp, e.scheduler_sp);
#else
  swapcontext(&f->context, &e.scheduler_context);
#endif
}

void fiber_main(void* arg) {
  Fiber* f = static_cast<Fiber*>(arg);
  (*emu().body)();
  f->state = State::kDone;
  yield_to_scheduler();
  __builtin_trap();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_main_ucontext(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<void*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void start_fiber(Fiber& f) {
  if (f.stack == nullptr) {
    void* memory = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(memory != MAP_FAILED, "CUDA emulation: cannot allocate a fiber stack");
    mprotect(memory, kGuardBytes, PROT_NONE);  // an overflow faults instead of corrupting memory
    f.stack = static_cast<char*>(memory);
  }
  char* top = f.stack + kGuardBytes + kStackBytes;
#if defined(__x86_64__)
  // The frame fastadv_emu_switch pops: control words, r15, r14, r13 (entry), r12 (argument),
  // rbx, rbp, return address (the trampoline).
  auto* frame = reinterpret_cast<uint64_t*>(top - 16 - 72);
  uint32_t mxcsr;
  uint16_t fpu;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu));
  frame[0] = fpu;
  frame[1] = mxcsr;
  frame[2] = 0;
  frame[3] = 0;
  frame[4] = reinterpret_cast<uint64_t>(&fiber_main);
  frame[5] = reinterpret_cast<uint64_t>(&f);
  frame[6] = 0;
  frame[7] = 0;
  frame[8] = reinterpret_cast<uint64_t>(&fastadv_emu_trampoline);
  f.sp = frame;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack + kGuardBytes;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  const auto address = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main_ucontext), 2, static_cast<unsigned>(address >> 32),
              static_cast<unsigned>(address & 0xFFFFFFFFu));
#endif
}

// ---- invalid memory accesses inside kernels ----
sigjmp_buf fault_jump;
volatile sig_atomic_t in_kernel = 0;
void* volatile fault_address = nullptr;
volatile int fault_signal = 0;

struct sigaction old_segv {};
struct sigaction old_bus {};

void on_fault(int signal, siginfo_t* info, void*) {
  if (!in_kernel) {  // not a kernel's: put the previous handler back; the access faults again
    sigaction(signal, signal == SIGSEGV ? &old_segv : &old_bus, nullptr);
    return;
  }
  fault_address = info->si_addr;
  fault_signal = signal;
  in_kernel = 0;
  siglongjmp(fault_jump, 1);
}

// Installs the fault handlers (on an alternate stack: a fiber may have overflowed its own) for
// the lifetime of one launch, and restores what was there before (pytest's faulthandler).
class FaultHandlers {
 public:
  FaultHandlers() {
    static std::vector<char> alt(256 * 1024);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, &old_stack_);
    struct sigaction action {};
    action.sa_sigaction = &on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &old_segv);
    sigaction(SIGBUS, &action, &old_bus);
  }
  ~FaultHandlers() {
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_stack_, nullptr);
  }

 private:
  stack_t old_stack_{};
};

// ---- the scheduler ----
void resume(Fiber& f) {
  Emulator& e = emu();
  e.current = &f;
  threadIdx = f.tid;
  in_kernel = 1;
#if defined(__x86_64__)
  fastadv_emu_switch(&e.scheduler_sp, f.sp);
#else
  swapcontext(&e.scheduler_context, &f.context);
#endif
  in_kernel = 0;
  e.current = nullptr;
}

// The next thread to resume: the lowest-numbered runnable one (forward), the highest
// (reverse), or any at random. Each runs until it blocks, so forward lets warp 0 run ahead of the
// others through every shuffle, reverse the last warp, and random mixes them: a missing barrier
// shows as a read of data its writer has not produced yet, or has already overwritten.
int pick(const std::vector<Fiber>& fibers, const std::string& order, std::mt19937_64& random) {
  const int n = static_cast<int>(fibers.size());
  if (order == "random") {
    int runnable = 0;
    for (const Fiber& f : fibers) runnable += f.state == State::kRunnable;
    if (runnable == 0) return -1;
    int k = static_cast<int>(random() % static_cast<uint64_t>(runnable));
    for (int t = 0; t < n; ++t) {
      if (fibers[t].state == State::kRunnable && k-- == 0) return t;
    }
  }
  const bool reverse = order == "reverse";
  for (int i = 0; i < n; ++i) {
    const int t = reverse ? n - 1 - i : i;
    if (fibers[t].state == State::kRunnable) return t;
  }
  return -1;
}

std::string describe_deadlock(const std::vector<Fiber>& fibers) {
  std::ostringstream s;
  int done = 0;
  const Fiber* first_done = nullptr;
  std::vector<std::pair<std::string, int>> waits;
  for (const Fiber& f : fibers) {
    if (f.state == State::kDone) {
      if (!first_done) first_done = &f;
      ++done;
      continue;
    }
    std::ostringstream at;
    at << (f.state == State::kAtBarrier ? "__syncthreads at " : (f.sync_only ? "__syncwarp at " : "a shuffle at "))
       << f.file << ":" << f.line;
    auto it = std::find_if(waits.begin(), waits.end(), [&](auto& w) { return w.first == at.str(); });
    if (it == waits.end()) {
      waits.emplace_back(at.str(), 1);
    } else {
      ++it->second;
    }
  }
  s << "the threads of the block cannot all go on:";
  for (auto& [what, count] : waits) s << " " << count << " of " << fibers.size() << " wait at " << what << ";";
  if (done) s << " " << done << " finished without reaching it (first: " << where(*first_done) << ")";
  return s.str();
}

void run_block(const LaunchSite& site, int64_t threads, uint64_t block_index) {
  Emulator& e = emu();
  ++e.generation;
  e.fibers.resize(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    Fiber& f = e.fibers[t];
    f.state = State::kRunnable;
    f.linear = t;
    f.tid = {static_cast<unsigned>(t % blockDim.x), static_cast<unsigned>((t / blockDim.x) % blockDim.y),
             static_cast<unsigned>(t / (blockDim.x * blockDim.y))};
    start_fiber(f);
  }
  std::mt19937_64 random(e.options.seed * 0x9E3779B97F4A7C15ull + block_index);
  while (true) {
    const int t = pick(e.fibers, e.options.order, random);
    if (t >= 0) {
      resume(e.fibers[t]);
      TORCH_CHECK(e.error.empty(), "CUDA emulation: ", site_text(site), ": ", e.error);
      continue;
    }
    if (std::all_of(e.fibers.begin(), e.fibers.end(), [](const Fiber& f) { return f.state == State::kDone; })) return;
    // Nobody can run: only a barrier that every thread reached, at one line, lets them go on.
    const Fiber& head = e.fibers.front();
    const bool barrier = std::all_of(e.fibers.begin(), e.fibers.end(), [&](const Fiber& f) {
      return f.state == State::kAtBarrier && f.line == head.line && std::strcmp(f.file, head.file) == 0;
    });
    TORCH_CHECK(barrier, "CUDA emulation: ", site_text(site), " in block (", blockIdx.x, ", ", blockIdx.y, ", ",
                blockIdx.z, "): ", describe_deadlock(e.fibers));
    for (Fiber& f : e.fibers) f.state = State::kRunnable;
  }
}

void fail_in_kernel(const std::string& message) {
  Emulator& e = emu();
  e.error = message + " (" + where(*e.current) + ")";
  e.current->state = State::kFailed;
  yield_to_scheduler();
  __builtin_trap();  // a failed fiber is never resumed
}

}  // namespace

uint64_t block_generation() {
  return emu().generation;
}

void device_error(const std::string& message) {
  fail_in_kernel(message);
}

void misaligned(const void* address, std::size_t alignment, const char* type_name) {
  std::ostringstream s;
  s << "misaligned vector access: address " << address << " is not a multiple of " << alignment
    << " bytes (the alignment of " << type_name << ")";
  fail_in_kernel(s.str());
}

void syncthreads(const char* file, int line) {
  Fiber* f = emu().current;
  TORCH_INTERNAL_ASSERT(f != nullptr, "__syncthreads outside a kernel");
  f->state = State::kAtBarrier;
  f->file = file;
  f->line = line;
  yield_to_scheduler();
}

namespace {

// The lanes of f's warp, and whether the warp can exchange now. Called by the lane that arrives.
void arrive_at_warp_op(Fiber& f) {
  Emulator& e = emu();
  const int threads = static_cast<int>(e.fibers.size());
  const int warp = f.linear / 32, lane = f.linear % 32;
  const int lanes = std::min(32, threads - warp * 32);
  const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  std::ostringstream problem;
  if (f.mask & ~existing) {
    problem << "warp operation at " << f.file << ":" << f.line << " with mask 0x" << std::hex << f.mask << std::dec
            << " on a partial warp of " << lanes << " lanes (blockDim.x * y * z = " << threads
            << " is not a multiple of 32)";
    fail_in_kernel(problem.str());
  }
  if (!(f.mask & (1u << lane))) {
    problem << "warp operation at " << f.file << ":" << f.line << " by lane " << lane << ", which its mask 0x" << std::hex
            << f.mask << " does not name";
    fail_in_kernel(problem.str());
  }
  for (int l = 0; l < lanes; ++l) {
    if (!(f.mask & (1u << l))) continue;
    const Fiber& other = e.fibers[warp * 32 + l];
    if (other.state == State::kRunnable) return;  // still on its way
    const bool same = other.state == State::kAtShuffle && other.line == f.line && std::strcmp(other.file, f.file) == 0;
    if (!same) {
      problem << "warp operation at " << f.file << ":" << f.line << " not reached by lane " << l << " of warp " << warp
              << ", which " << (other.state == State::kDone ? "finished" : "waits elsewhere (line ")
              << (other.state == State::kDone ? "" : std::to_string(other.line) + ")");
      fail_in_kernel(problem.str());
    }
  }
  // Every named lane is here: exchange, then all may go on.
  for (int l = 0; l < lanes; ++l) {
    if (!(f.mask & (1u << l))) continue;
    Fiber& dst = e.fibers[warp * 32 + l];
    if (!f.sync_only) {
      const int width = dst.width, segment = l - l % width;
      int src = l;
      switch (dst.kind) {
        case ShuffleKind::kIndex:
          src = segment + ((dst.operand % width) + width) % width;
          break;
        case ShuffleKind::kUp:
          src = l - dst.operand >= segment ? l - dst.operand : l;
          break;
        case ShuffleKind::kDown:
          src = l + dst.operand < segment + width ? l + dst.operand : l;
          break;
        case ShuffleKind::kXor:
          src = (l ^ dst.operand) < segment + width ? (l ^ dst.operand) : l;
          break;
      }
      if (src >= lanes || !(f.mask & (1u << src))) {
        problem << "shuffle at " << f.file << ":" << f.line << ": lane " << l << " reads lane " << src
                << ", which does not take part";
        fail_in_kernel(problem.str());
      }
      dst.result = e.fibers[warp * 32 + src].value;
    }
    dst.state = State::kRunnable;
  }
}

uint64_t warp_op(bool sync_only, ShuffleKind kind, unsigned mask, uint64_t bits, int operand, int width,
                 const char* file, int line) {
  Fiber* f = emu().current;
  TORCH_INTERNAL_ASSERT(f != nullptr, "warp operation outside a kernel");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    device_error("shuffle width " + std::to_string(width) + " is not a power of two <= 32");
  }
  f->state = State::kAtShuffle;
  f->sync_only = sync_only;
  f->kind = kind;
  f->mask = mask;
  f->value = bits;
  f->operand = operand;
  f->width = width;
  f->file = file;
  f->line = line;
  arrive_at_warp_op(*f);
  yield_to_scheduler();
  return f->result;
}

}  // namespace

uint64_t shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int operand, int width, const char* file, int line) {
  return warp_op(false, kind, mask, bits, operand, width, file, line);
}

void syncwarp(const char* file, int line, unsigned mask) {
  warp_op(true, ShuffleKind::kIndex, mask, 0, 0, 32, file, line);
}

void Launch::execute(const std::function<void()>& body) {
  Emulator& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const std::string what = site_text(site_);
  TORCH_CHECK(!e.pending_check, "CUDA emulation: ", site_text(e.pending_site),
              " was not followed by an error check (cudaGetLastError / C10_CUDA_KERNEL_LAUNCH_CHECK) before ", what);
  TORCH_CHECK(grid_.x >= 1 && grid_.x <= INT32_MAX, "CUDA emulation: ", what, " with gridDim.x = ", grid_.x,
              ": outside [1, 2^31 - 1] (a GPU fails with 'invalid configuration' or, past 2^32, silently "
              "launches the truncated value)");
  TORCH_CHECK(grid_.y >= 1 && grid_.y <= 65535 && grid_.z >= 1 && grid_.z <= 65535, "CUDA emulation: ", what,
              " with gridDim.y/z = ", grid_.y, "/", grid_.z, ": outside [1, 65535]");
  const int64_t threads = block_.x * block_.y * block_.z;
  TORCH_CHECK(block_.x >= 1 && block_.y >= 1 && block_.z >= 1 && block_.x <= 1024 && block_.y <= 1024 &&
                  block_.z <= 64 && threads <= 1024,
              "CUDA emulation: ", what, " with blockDim (", block_.x, ", ", block_.y, ", ", block_.z,
              "): beyond the limits (x, y <= 1024, z <= 64, at most 1024 threads)");
  TORCH_CHECK(shared_bytes_ <= 48 * 1024, "CUDA emulation: ", what, " asks for ", shared_bytes_,
              " bytes of dynamic shared memory (more than 48 KiB needs an opt-in)");
  TORCH_CHECK(e.guard_depth > 0, "CUDA emulation: ", what, " without a device guard (c10::cuda::CUDAGuard)");
  const auto stream = static_cast<int64_t>(reinterpret_cast<uintptr_t>(stream_));
  TORCH_CHECK(stream == e.current_stream, "CUDA emulation: ", what, " on stream ", stream,
              " but the current stream is ", e.current_stream, " (kernels must launch on getCurrentCUDAStream())");
  const int64_t blocks = grid_.x * grid_.y * grid_.z;
  std::vector<int64_t> chosen;
  if (e.options.execute) {
    if (e.options.blocks.empty()) {
      chosen.resize(blocks);
      std::iota(chosen.begin(), chosen.end(), 0);
    } else {
      for (int64_t b : e.options.blocks) {
        const int64_t k = b < 0 ? blocks + b : b;
        if (k >= 0 && k < blocks && std::find(chosen.begin(), chosen.end(), k) == chosen.end()) chosen.push_back(k);
      }
      std::sort(chosen.begin(), chosen.end());
    }
  }
  e.records.push_back({site_.kernel, std::string(site_.file) + ":" + std::to_string(site_.line),
                       {grid_.x, grid_.y, grid_.z}, {block_.x, block_.y, block_.z},
                       static_cast<int64_t>(chosen.size())});
  // A launch needs an error check before the next one (or the end of the op); a launch that
  // raised here needs none.
  struct MarkPending {
    Emulator& e;
    const LaunchSite& site;
    ~MarkPending() {
      if (std::uncaught_exceptions() == 0) {
        e.pending_check = true;
        e.pending_site = site;
      }
    }
  } mark{e, site_};
  if (chosen.empty()) return;

  gridDim = dim3(static_cast<unsigned>(grid_.x), static_cast<unsigned>(grid_.y), static_cast<unsigned>(grid_.z));
  blockDim = dim3(static_cast<unsigned>(block_.x), static_cast<unsigned>(block_.y), static_cast<unsigned>(block_.z));
  e.body = &body;
  e.site = &site_;
  e.error.clear();
  FaultHandlers handlers;
  if (sigsetjmp(fault_jump, 1) != 0) {
    std::ostringstream s;
    s << "CUDA emulation: " << what << ": invalid memory access (signal " << fault_signal << ") at address "
      << fault_address;
    if (e.current != nullptr) s << " by " << where(*e.current);
    e.current = nullptr;
    TORCH_CHECK(false, s.str());
  }
  for (int64_t k : chosen) {
    blockIdx = {static_cast<unsigned>(k % grid_.x), static_cast<unsigned>((k / grid_.x) % grid_.y),
                static_cast<unsigned>(k / (grid_.x * grid_.y))};
    run_block(site_, threads, static_cast<uint64_t>(k));
  }
}

}  // namespace fastadv_emu

// ---- the runtime API ----
cudaError_t cudaGetLastError() {
  fastadv_emu::emu().pending_check = false;
  return cudaSuccess;  // a bad launch raised at once
}

const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid configuration argument";
}

// The emulated machine has two GPUs: device 0 with an H100 SXM's numbers, device 1 with 2
// multiprocessors, on which the launchers' capped grids make the grid-stride loops loop even on
// small tensors. The launchers size their grids from these numbers.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  TORCH_CHECK(device == 0 || device == 1, "CUDA emulation: cudaDeviceGetAttribute for device ", device,
              " (pass the guard's device, not a CPU tensor's -1)");
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = device == 0 ? 132 : 2;
      break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      *value = 2048;
      break;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      break;
  }
  return cudaSuccess;
}

namespace c10::cuda {

c10::DeviceIndex current_device() {
  return static_cast<c10::DeviceIndex>(fastadv_emu::emu().options.device);
}

CUDAGuard::CUDAGuard(c10::Device) {
  ++fastadv_emu::emu().guard_depth;
}

CUDAGuard::~CUDAGuard() {
  --fastadv_emu::emu().guard_depth;
}

CUDAStream getCurrentCUDAStream(c10::DeviceIndex) {
  return CUDAStream(reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(fastadv_emu::emu().current_stream)));
}

}  // namespace c10::cuda

// ---- control ops for backend.py ----
namespace {

void configure(const std::string& order, int64_t seed, c10::IntArrayRef blocks, bool execute, int64_t device) {
  TORCH_CHECK(order == "forward" || order == "reverse" || order == "random",
              "thread_order must be forward, reverse or random, got ", order);
  auto& e = fastadv_emu::emu();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  e.options.order = order;
  e.options.seed = static_cast<uint64_t>(seed);
  e.options.blocks.assign(blocks.begin(), blocks.end());
  e.options.execute = execute;
  TORCH_CHECK(device == 0 || device == 1, "device must be 0 (an H100) or 1 (2 multiprocessors)");
  e.options.device = static_cast<int>(device);
}

void begin_op(int64_t stream) {
  auto& e = fastadv_emu::emu();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  e.current_stream = stream;
  e.pending_check = false;
  e.records.clear();
}

// One line per launch: kernel | file:line | grid x y z | block x y z | blocks run.
std::string end_op() {
  auto& e = fastadv_emu::emu();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const bool unchecked = e.pending_check;
  const fastadv_emu::LaunchSite site = e.pending_site;
  e.pending_check = false;
  std::ostringstream s;
  for (const auto& r : e.records) {
    s << r.kernel << "|" << r.site << "|" << r.grid[0] << " " << r.grid[1] << " " << r.grid[2] << "|" << r.block[0]
      << " " << r.block[1] << " " << r.block[2] << "|" << r.blocks_run << "\n";
  }
  TORCH_CHECK(!unchecked, "CUDA emulation: ", fastadv_emu::site_text(site),
              " was not followed by an error check (cudaGetLastError / C10_CUDA_KERNEL_LAUNCH_CHECK)");
  return s.str();
}

// Address space without memory: MAP_NORESERVE pages cost nothing until touched, so a test can
// hand a kernel a tensor of more than 2^31 elements and run only some of its blocks.
at::Tensor virtual_tensor(c10::IntArrayRef sizes, c10::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const std::size_t bytes = static_cast<std::size_t>(std::max<int64_t>(numel, 1)) * c10::elementSize(dtype);
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(memory != MAP_FAILED, "virtual_tensor: mmap of ", bytes, " bytes failed");
  return at::from_blob(
      memory, sizes, [bytes](void* p) { munmap(p, bytes); }, at::TensorOptions().dtype(dtype));
}

}  // namespace

TORCH_LIBRARY(fastadv_cuda_emulation, m) {
  m.def("configure(str thread_order, int seed, int[] blocks, bool execute, int device) -> ()", &configure);
  m.def("begin_op(int stream) -> ()", &begin_op);
  m.def("end_op() -> str", &end_op);
  m.def("virtual_tensor(int[] sizes, ScalarType dtype) -> Tensor", &virtual_tensor);
}
