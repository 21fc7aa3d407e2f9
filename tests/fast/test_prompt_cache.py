"""The host-memory prompt cache: longest prefix wins, least recently used leaves first."""

from __future__ import annotations

from appliance.engines.llm.prompt_cache import PromptCache


def test_longest_shared_prefix_is_found() -> None:
    cache = PromptCache(budget_bytes=1000)
    cache.put([1, 2, 3, 4], b"a" * 10)
    cache.put([1, 2, 9], b"b" * 10)
    shared, entry = cache.best([1, 2, 3, 7])
    assert shared == 3 and entry is not None and entry.state == b"a" * 10
    assert cache.best([5, 6]) == (0, None)


def test_a_longer_entry_replaces_its_prefixes() -> None:
    cache = PromptCache(budget_bytes=1000)
    cache.put([1, 2], b"x" * 10)
    cache.put([1, 2, 3], b"y" * 20)
    assert len(cache) == 1 and cache.used_bytes == 20
    assert cache.covers([1, 2]) and cache.covers([1, 2, 3]) and not cache.covers([1, 3])


def test_budget_evicts_least_recently_used() -> None:
    cache = PromptCache(budget_bytes=25)
    cache.put([1], b"a" * 10)
    cache.put([2], b"b" * 10)
    cache.best([1])  # touch [1]: [2] is now the oldest
    cache.put([3], b"c" * 10)
    assert cache.best([2]) == (0, None)
    assert cache.best([1])[0] == 1 and cache.best([3])[0] == 1
    assert cache.used_bytes == 20


def test_disabled_cache_keeps_nothing() -> None:
    cache = PromptCache(budget_bytes=0)
    cache.put([1, 2], b"a")
    assert not cache.enabled and len(cache) == 0
