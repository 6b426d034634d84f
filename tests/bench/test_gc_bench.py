"""bench/gc.py at a tiny size: the atoll side builds the collection, packs it and
leaves what ZODB's procedure would (the live half); no assertion about speed."""

from __future__ import annotations

from bench.gc import atoll_side


def test_the_atoll_side_collects_the_garbage_half(tmp_path):
    result = atoll_side(tmp_path, 200)
    # b: root, anchor and the 100 live peers; a: root, the live tree's nodes and its
    # 100 items (the doomed tree's 100 items and its nodes are gone)
    assert result["left"]["b"] == 102
    assert 102 < result["left"]["a"] < 200
    assert result["size_after"] <= result["size_before"]
