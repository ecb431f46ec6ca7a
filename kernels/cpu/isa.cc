#include "kernels/cpu/isa.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <iterator>

namespace ringattn::kernels::cpu {
namespace {

struct CpuidRegs {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

CpuidRegs Cpuid(unsigned leaf, unsigned subleaf) {
  CpuidRegs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) return CpuidRegs{};
  return r;
}

// The state components the OS saves on a context switch (XCR0), 0 without
// OSXSAVE.
uint64_t EnabledXsaveFeatures() {
  if ((Cpuid(1, 0).ecx & (1u << 27)) == 0) return 0;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

bool HasAvx512Bf16() {
  return (Cpuid(7, 1).eax & (1u << 5)) != 0;  // AVX512_BF16
}

// Linux keeps AMX's 8 KiB of tile data out of a process's signal frames
// until the process asks for it; without the permission the first tile
// instruction faults. Asked once per process.
bool RequestAmxPermission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool AmxUsable() {
  const CpuidRegs leaf7 = Cpuid(7, 0);
  const bool tile = (leaf7.edx & (1u << 24)) != 0;  // AMX-TILE
  const bool bf16 = (leaf7.edx & (1u << 22)) != 0;  // AMX-BF16
  // XTILECFG (bit 17) and XTILEDATA (bit 18) enabled by the OS.
  const bool os_state = (EnabledXsaveFeatures() & (uint64_t{3} << 17)) == (uint64_t{3} << 17);
  if (!tile || !bf16 || !os_state) return false;
  static const bool permitted = RequestAmxPermission();
  return permitted;
}

}  // namespace

absl::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
    case Isa::kAmx:
      return "amx";
  }
  return "unknown";
}

std::optional<Isa> ParseIsa(absl::string_view name) {
  for (Isa isa : kAllIsas) {
    if (IsaName(isa) == name) return isa;
  }
  return std::nullopt;
}

bool IsaSupported(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
    case Isa::kAvx512Bf16:
      return IsaSupported(Isa::kAvx512) && HasAvx512Bf16();
    case Isa::kAmx:
      return IsaSupported(Isa::kAvx512Bf16) && AmxUsable();
  }
  return false;
}

Isa BestIsa() {
  for (int i = static_cast<int>(std::size(kAllIsas)) - 1; i > 0; --i) {
    if (IsaSupported(kAllIsas[i])) return kAllIsas[i];
  }
  return Isa::kGeneric;
}

}  // namespace ringattn::kernels::cpu
