"""tagtune.allocator: freed memory stays in the process, so a large temporary made again is not faulted in again."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from tagtune.allocator import keep_freed_memory

MB = 2**20


def _faults_of_a_fresh_64mb_tensor() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(64 * MB // 4)  # written whole: every page is touched
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux setting")
def test_a_freed_large_block_is_reused_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("this Linux's C library is not glibc (no mallopt)")
    _faults_of_a_fresh_64mb_tensor()  # the heap grows once
    pages = 64 * MB // resource.getpagesize()
    # mapped afresh, every try would fault every page again (16385 of 16384 measured without the setting). Once
    # in a whole-suite run a single try faulted in full after the setting, so the best of three is asserted.
    assert min(_faults_of_a_fresh_64mb_tensor() for _ in range(3)) < pages // 10
