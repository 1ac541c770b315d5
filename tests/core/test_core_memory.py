"""The allocator setting locate makes (glibc's fixed mmap threshold)."""
from __future__ import annotations

import platform

import pytest

from farslip.core.memory import return_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_mmap_threshold():
    assert return_freed_memory(1 << 20) is True  # mallopt found and the parameter accepted
