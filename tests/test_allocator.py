"""``keep_freed_memory``: applies glibc's mallopt once, and steps aside when the user chose otherwise."""

from __future__ import annotations

import platform

import pytest

from slowed_peft.utils import allocator


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "SLOWED_KEEP_FREED_MEMORY"):
        monkeypatch.delenv(key, raising=False)


def test_applies_on_glibc_and_only_once(monkeypatch):
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert allocator.keep_freed_memory() is expected
    monkeypatch.setenv("SLOWED_KEEP_FREED_MEMORY", "0")  # decided once per process: later calls repeat the answer
    assert allocator.keep_freed_memory() is expected


@pytest.mark.parametrize(
    "env",
    [
        ("SLOWED_KEEP_FREED_MEMORY", "0"),
        ("SLOWED_KEEP_FREED_MEMORY", "off"),
        ("MALLOC_MMAP_MAX_", "65536"),
        ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"),
    ],
)
def test_user_choice_wins(monkeypatch, env):
    monkeypatch.setenv(*env)
    assert allocator.keep_freed_memory() is False


def test_non_glibc_is_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
