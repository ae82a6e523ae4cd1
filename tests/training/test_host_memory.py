"""host_memory: freed host memory is reused, not page-faulted in again.

Each check runs in a fresh interpreter: the malloc settings are process-wide and not undone.
"""

import subprocess
import sys

import pytest

from w2v_jax.training import host_memory

# Allocates a 256 MiB block with glibc's malloc, touches every page, frees it, then does the same
# again and prints the minor page faults taken by the second round.
_PROBE = """
import ctypes, ctypes.util, resource, sys
from w2v_jax.training import host_memory
applied = host_memory.configure(sys.argv[1])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 2**20
def touch_and_free():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(not host_memory.supported(), reason="mallopt is glibc's")


def _second_round_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


@glibc_only
def test_reuse_mode_takes_no_page_faults_for_a_block_freed_earlier():
    applied, faults = _second_round_faults("reuse")
    assert applied
    # 256 MiB is 65,536 pages of 4 KiB: reusing the freed block faults none of them back in.
    # 100 leaves room for the interpreter's own small allocations between the two rounds.
    assert faults < 100


@glibc_only
def test_system_mode_leaves_glibc_unmapping_large_blocks():
    # The control: without the settings the same block is mapped afresh and faulted in again,
    # at least one fault per 2 MiB (transparent huge pages), usually one per 4 KiB page.
    applied, faults = _second_round_faults("system")
    assert not applied
    assert faults >= 128


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="host malloc mode"):
        host_memory.configure("jemalloc")
