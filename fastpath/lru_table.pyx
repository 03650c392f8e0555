# cython: language_level=3
"""A bounded table of byte-string keys with least-recently-used eviction, in C.

What the rate limiter keys its buckets by (client addresses, header values, claims) and
what the token cache keys verified credentials by: keys chosen by clients, so the table
must stay bounded under a flood of new keys and must not degrade under crafted ones.

- `capacity` slots, allocated once; a slot's index is stable while its key lives, so a
  user keeps its per-key values in its own arrays indexed by slot.
- Separate chaining over a power-of-two bucket array (twice the capacity), hashed with a
  per-table random seed, so colliding keys cannot be precomputed.
- A doubly linked recency list: `find` and `insert` make a key the newest; an insert
  into a full table reuses the oldest slot (one eviction). A key that keeps being used
  is never the oldest, so a flood of new keys evicts only keys that went quiet.
- Keys up to LRU_KEY_INLINE bytes are compared whole; for longer ones the slot keeps the
  first LRU_KEY_INLINE bytes, and length, prefix and 64-bit hash must all match. Users for
  which a false match would matter (the token cache) compare the full key themselves.

Nothing here allocates after construction or touches a Python object per call.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy, memset

DEF MULT = 0x9E3779B97F4A7C15


cdef inline uint64_t _mix(uint64_t x) noexcept:
    x ^= x >> 32
    x *= <uint64_t>0xd6e8feb86659fd93
    x ^= x >> 32
    x *= <uint64_t>0xd6e8feb86659fd93
    x ^= x >> 32
    return x


cdef uint64_t hash_span(const char* p, Py_ssize_t n, uint64_t seed) noexcept:
    """A seeded 64-bit hash of p[0:n] (word-at-a-time multiply-xorshift)."""
    cdef uint64_t h = seed ^ (<uint64_t>n * <uint64_t>MULT)
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * <uint64_t>MULT       # one multiply per word; the seed and the final
        h ^= h >> 31                       # mix spread it (keys are compared on a hit)
        i += 8
    if i < n:
        w = 0
        memcpy(&w, p + i, n - i)
        h = _mix(h ^ w ^ (<uint64_t>(n - i) << 56)) * <uint64_t>MULT
    return _mix(h)


cdef uint64_t _random_seed():
    cdef bytes b = os.urandom(8)
    cdef uint64_t s
    memcpy(&s, PyBytes_AS_STRING(b), 8)
    return s


cdef class LruTable:
    def __cinit__(self, int capacity, seed=None):
        cdef int i
        cdef uint64_t nb = 2
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        while nb < <uint64_t>capacity * 2:
            nb <<= 1
        self.capacity = capacity
        self.bucket_mask = nb - 1
        # Both allocated untouched (calloc'd buckets read as empty): a table costs resident
        # memory only for the slots that get used.
        self.slots = <LruSlot*>malloc(sizeof(LruSlot) * capacity)
        self.buckets = <int32_t*>calloc(nb, sizeof(int32_t))
        if self.slots == NULL or self.buckets == NULL:
            raise MemoryError()
        self.seed = _random_seed() if seed is None else <uint64_t>seed
        self._reset()

    def __dealloc__(self):
        free(self.slots)
        free(self.buckets)

    cdef void clear(self) noexcept:
        """Forgets every key."""
        memset(self.buckets, 0, sizeof(int32_t) * (self.bucket_mask + 1))
        self._reset()

    cdef void _reset(self) noexcept:
        # Slots at and past next_free are never read, so they need no initialising.
        self.used = 0
        self.newest = -1
        self.oldest = -1
        self.next_free = 0
        self.free_list = -1

    cdef void _unlink_recency(self, int32_t s) noexcept:
        cdef LruSlot* e = &self.slots[s]
        if e.older >= 0:
            self.slots[e.older].newer = e.newer
        else:
            self.oldest = e.newer
        if e.newer >= 0:
            self.slots[e.newer].older = e.older
        else:
            self.newest = e.older

    cdef void _push_newest(self, int32_t s) noexcept:
        cdef LruSlot* e = &self.slots[s]
        e.older = self.newest
        e.newer = -1
        if self.newest >= 0:
            self.slots[self.newest].newer = s
        self.newest = s
        if self.oldest < 0:
            self.oldest = s

    cdef void _unlink_bucket(self, int32_t s) noexcept:
        cdef uint64_t b = self.slots[s].hash & self.bucket_mask
        cdef int32_t cur = self.buckets[b] - 1     # buckets hold slot + 1; 0 is empty
        cdef int32_t prev = -1
        while cur >= 0 and cur != s:
            prev = cur
            cur = self.slots[cur].next_in_bucket
        if cur < 0:
            return
        if prev < 0:
            self.buckets[b] = self.slots[s].next_in_bucket + 1
        else:
            self.slots[prev].next_in_bucket = self.slots[s].next_in_bucket

    cdef int find(self, const char* key, Py_ssize_t n) noexcept:
        """The slot of `key` (now the newest), or -1."""
        return self.find_hashed(key, n, hash_span(key, n, self.seed))

    cdef int find_hashed(self, const char* key, Py_ssize_t n, uint64_t h) noexcept:
        cdef int32_t s = self.buckets[h & self.bucket_mask] - 1
        cdef LruSlot* e
        cdef Py_ssize_t cmp = n if n < LRU_KEY_INLINE else LRU_KEY_INLINE
        while s >= 0:
            e = &self.slots[s]
            if e.hash == h and e.key_len == n and memcmp(e.key, key, cmp) == 0:
                self.touch(s)
                return s
            s = e.next_in_bucket
        return -1

    cdef int insert(self, const char* key, Py_ssize_t n) noexcept:
        """Adds `key` (known to be absent) as the newest; evicts the oldest key when full.
        Returns its slot, whose user values the caller must reset."""
        cdef uint64_t h = hash_span(key, n, self.seed)
        cdef int32_t s
        cdef LruSlot* e
        if self.free_list >= 0:
            s = self.free_list
            self.free_list = self.slots[s].next_in_bucket
            self.used += 1
        elif self.next_free < self.capacity:
            s = self.next_free
            self.next_free += 1
            self.used += 1
        else:
            s = self.oldest
            self._unlink_recency(s)
            self._unlink_bucket(s)
            self.evictions += 1
        e = &self.slots[s]
        e.hash = h
        e.key_len = <int32_t>n
        memcpy(e.key, key, n if n < LRU_KEY_INLINE else LRU_KEY_INLINE)
        e.next_in_bucket = self.buckets[h & self.bucket_mask] - 1
        self.buckets[h & self.bucket_mask] = s + 1
        self._push_newest(s)
        return s

    cdef void touch(self, int slot) noexcept:
        if slot != self.newest:
            self._unlink_recency(slot)
            self._push_newest(slot)

    cdef void remove(self, int slot) noexcept:
        """Forgets the key in `slot`; the slot is reused before any eviction."""
        if self.slots[slot].key_len < 0:
            return
        self._unlink_recency(slot)
        self._unlink_bucket(slot)
        self.slots[slot].key_len = -1
        self.slots[slot].next_in_bucket = self.free_list
        self.free_list = slot
        self.used -= 1

    # -- Python-level forms, for tests and tools -------------------------------------------

    def lookup(self, bytes key):
        """The slot of `key`, or -1 (makes it the newest)."""
        return self.find(PyBytes_AS_STRING(key), len(key))

    def add(self, bytes key):
        """The slot of `key`, inserting it (and evicting) when absent."""
        cdef int s = self.find(PyBytes_AS_STRING(key), len(key))
        if s < 0:
            s = self.insert(PyBytes_AS_STRING(key), len(key))
        return s

    def discard(self, bytes key):
        cdef int s = self.find(PyBytes_AS_STRING(key), len(key))
        if s >= 0:
            self.remove(s)

    def forget_all(self):
        self.clear()

    def keys_newest_first(self):
        cdef int32_t s = self.newest
        out = []
        while s >= 0:
            if self.slots[s].key_len >= 0:
                out.append(self.slots[s].key[:min(self.slots[s].key_len, LRU_KEY_INLINE)])
            s = self.slots[s].older
        return out
