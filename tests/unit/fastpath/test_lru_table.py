"""The bounded LRU key table (fastpath/lru_table.pyx)."""
from fastpath.lru_table import LruTable


def test_keys_are_found_and_slots_are_stable():
    t = LruTable(8, seed=1)
    slots = {k: t.add(k) for k in (b"a", b"b", b"c")}
    assert len(set(slots.values())) == 3
    for k, s in slots.items():
        assert t.lookup(k) == s
    assert t.lookup(b"zz") == -1


def test_a_full_table_evicts_the_least_recently_used():
    t = LruTable(3, seed=1)
    for k in (b"a", b"b", b"c"):
        t.add(k)
    t.lookup(b"a")              # a is now the newest; b the oldest
    t.add(b"d")
    assert t.lookup(b"b") == -1
    assert t.evictions == 1
    assert set(t.keys_newest_first()) == {b"a", b"c", b"d"}
    assert t.used == 3


def test_a_flood_of_new_keys_keeps_a_hot_key_and_the_size_bound():
    t = LruTable(64, seed=7)
    hot = t.add(b"hot")
    for i in range(10000):
        t.add(b"flood-%d" % i)
        if i % 10 == 0:
            assert t.lookup(b"hot") == hot
    assert t.used == 64
    assert t.lookup(b"hot") == hot


def test_long_keys_compare_by_length_prefix_and_hash():
    t = LruTable(4, seed=3)
    a = b"x" * 100 + b"a"
    b = b"x" * 100 + b"b"
    t.add(a)
    assert t.lookup(b) == -1
    assert t.lookup(a) >= 0


def test_removed_slots_are_reused_before_evicting():
    t = LruTable(2, seed=1)
    t.add(b"a")
    t.add(b"b")
    t.discard(b"a")
    t.add(b"c")
    assert t.evictions == 0 and t.lookup(b"b") >= 0 and t.lookup(b"c") >= 0
    t.forget_all()
    assert t.used == 0 and t.lookup(b"b") == -1
