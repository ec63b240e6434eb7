#include "huge_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace quantcore_native {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

void MappedMemory::operator()(void* start) const {
#if defined(__linux__)
  munmap(start, bytes);
#else
  (void)start;
#endif
}

HugePageMemory huge_page_memory(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePage) return nullptr;
  const size_t length = (bytes + 4095) / 4096 * 4096;
  const size_t total = length + kHugePage;
  void* raw = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto first = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (first + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  // keep [start, start + length): the rest of the mapping only served the alignment
  if (start > first) munmap(raw, start - first);
  const size_t after = total - (start - first) - length;
  if (after > 0) munmap(reinterpret_cast<void*>(start + length), after);
  HugePageMemory memory(reinterpret_cast<void*>(start), MappedMemory{length});
  if (madvise(memory.get(), length, MADV_HUGEPAGE) != 0) return nullptr;  // unmapped on return
  return memory;
#else
  (void)bytes;
  return nullptr;
#endif
}

}  // namespace quantcore_native
