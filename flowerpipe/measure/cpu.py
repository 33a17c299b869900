"""What this CPU computes fast, read from its flags (never assumed): bfloat16 needs AVX512_BF16 or AMX-BF16."""

from __future__ import annotations

import functools
from pathlib import Path

# x86 flags (as /proc/cpuinfo spells them) with native bfloat16 arithmetic: dot products, or AMX tiles.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags; empty where there is no /proc/cpuinfo (macOS) or it lists none."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_missing(cpu_flags: frozenset[str] | None = None) -> str:
    """Why this CPU has no native bfloat16 ('' when it has it)."""
    have = flags() if cpu_flags is None else cpu_flags
    if not have:
        return "the CPU's flags are unknown here (no /proc/cpuinfo), so bfloat16 is not assumed"
    if any(f in have for f in BF16_FLAGS):
        return ""
    return "this CPU has no bfloat16 instructions (neither AVX512_BF16 nor AMX-BF16 in /proc/cpuinfo)"
