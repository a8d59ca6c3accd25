// Keeps freed blocks of at least kMinBytes mapped and hands them out again (LD_PRELOAD; see
// hdvila_jax/block_cache.py). XLA:CPU allocates a step's temporaries as one large block per
// execution and frees it at the end; glibc returns such a block to the kernel, which zeroes fresh
// pages for it on the next step. Smaller requests, and large ones this cache cannot serve, go to
// glibc unchanged.
#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_realloc(void* ptr, size_t size);
void* __libc_memalign(size_t alignment, size_t size);
void __libc_free(void* ptr);
}

namespace {

constexpr size_t kMinBytes = size_t{64} << 20;  // smallest block kept
constexpr size_t kPageBytes = size_t{2} << 20;  // blocks are whole 2 MiB (huge) pages
constexpr int kSlots = 16;                      // most blocks mapped at once
constexpr size_t kMaxFreeBytes = size_t{8} << 30;  // most bytes kept mapped while free

// `start` is read without the lock by free() and friends: a block in use keeps its start, and no
// block can start where glibc has a live allocation, so a pointer matches a slot only if it is ours.
struct Block {
  std::atomic<void*> start{nullptr};
  size_t bytes = 0;
  bool in_use = false;
};

Block blocks[kSlots];
size_t free_bytes = 0;  // in blocks not in use
pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;

struct Lock {
  Lock() { pthread_mutex_lock(&mutex); }
  ~Lock() { pthread_mutex_unlock(&mutex); }
};

void lock_for_fork() { pthread_mutex_lock(&mutex); }
void unlock_after_fork() { pthread_mutex_unlock(&mutex); }
const int fork_handlers = pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);

// The smallest free block that holds `size` bytes, else a new mapping in a free slot (unmapping
// a free block too small first when no slot is empty); nullptr when neither works out.
void* take(size_t size) {
  Lock lock;
  Block* best = nullptr;
  for (Block& b : blocks)
    if (b.start.load() && !b.in_use && b.bytes >= size && (!best || b.bytes < best->bytes)) best = &b;
  if (best) {
    best->in_use = true;
    free_bytes -= best->bytes;
    return best->start;
  }
  Block* slot = nullptr;
  for (Block& b : blocks)
    if (!b.start.load()) slot = &b;
  if (!slot)
    for (Block& b : blocks)
      if (!b.in_use) {
        free_bytes -= b.bytes;
        munmap(b.start.exchange(nullptr), b.bytes);
        slot = &b;
        break;
      }
  if (!slot) return nullptr;
  size_t bytes = (size + kPageBytes - 1) / kPageBytes * kPageBytes;
  void* start = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (start == MAP_FAILED) return nullptr;
  madvise(start, bytes, MADV_HUGEPAGE);
  slot->bytes = bytes;
  slot->in_use = true;
  slot->start.store(start);
  return start;
}

// The block starting at `ptr`, or nullptr when glibc allocated it (no lock: see Block).
Block* find(void* ptr) {
  for (Block& b : blocks)
    if (ptr && b.start.load(std::memory_order_acquire) == ptr) return &b;
  return nullptr;
}

// Keeps the block of `ptr` for the next request, or unmaps it when that would keep more than
// kMaxFreeBytes mapped; false when glibc allocated `ptr`.
bool give_back(void* ptr) {
  Block* b = find(ptr);
  if (!b) return false;
  Lock lock;
  if (free_bytes + b->bytes > kMaxFreeBytes) {
    munmap(b->start.exchange(nullptr), b->bytes);
  } else {
    b->in_use = false;
    free_bytes += b->bytes;
  }
  return true;
}

size_t cached_bytes(void* ptr) {
  Block* b = find(ptr);
  return b ? b->bytes : 0;
}

bool valid_alignment(size_t alignment) {
  return alignment % sizeof(void*) == 0 && (alignment & (alignment - 1)) == 0;
}

void* take_aligned(size_t alignment, size_t size) {
  return size >= kMinBytes && alignment <= kPageBytes ? take(size) : nullptr;
}

}  // namespace

extern "C" {

void* malloc(size_t size) {
  void* p = take_aligned(1, size);
  return p ? p : __libc_malloc(size);
}

void free(void* ptr) {
  if (!give_back(ptr)) __libc_free(ptr);
}

void* realloc(void* ptr, size_t size) {
  size_t bytes = cached_bytes(ptr);
  if (!bytes) return __libc_realloc(ptr, size);
  if (size <= bytes) return ptr;
  void* moved = malloc(size);
  if (moved) {
    std::memcpy(moved, ptr, bytes);
    free(ptr);
  }
  return moved;
}

int posix_memalign(void** out, size_t alignment, size_t size) {
  if (!valid_alignment(alignment)) return EINVAL;
  void* p = take_aligned(alignment, size);
  if (!p) p = __libc_memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void* aligned_alloc(size_t alignment, size_t size) {
  void* p = take_aligned(alignment, size);
  return p ? p : __libc_memalign(alignment, size);
}

void* memalign(size_t alignment, size_t size) { return aligned_alloc(alignment, size); }

size_t malloc_usable_size(void* ptr) {
  size_t bytes = cached_bytes(ptr);
  if (bytes) return bytes;
  static auto glibc = reinterpret_cast<size_t (*)(void*)>(dlsym(RTLD_NEXT, "malloc_usable_size"));
  return glibc(ptr);
}

}  // extern "C"
