// Memory for packed weights that the OS may back with 2 MiB pages (Linux's transparent huge pages,
// asked for with madvise): a call that streams its weight from memory, as one token does, then
// needs a 512th of the TLB entries. Used by Int8Linear and by benchmarks/bare_gemm.cpp, which packs
// its weight as quantcore does.
#pragma once

#include <cstddef>
#include <memory>

namespace quantcore_native {

// Releases what huge_page_memory mapped.
struct MappedMemory {
  size_t bytes = 0;
  void operator()(void* start) const;
};

using HugePageMemory = std::unique_ptr<void, MappedMemory>;

// `bytes` of zeroed memory starting on a 2 MiB boundary, asked to be backed with 2 MiB pages;
// null below one such page (it would fill none) and where the OS cannot (not Linux, no memory).
HugePageMemory huge_page_memory(size_t bytes);

}  // namespace quantcore_native
