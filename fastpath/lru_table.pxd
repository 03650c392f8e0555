# Declarations of the bounded LRU key table; see lru_table.pyx.
from libc.stdint cimport uint64_t, int32_t

cdef enum:
    LRU_KEY_INLINE = 64        # key bytes kept in a slot; longer keys compare by hash + prefix

cdef struct LruSlot:
    uint64_t hash
    int32_t next_in_bucket     # -1: end of chain
    int32_t older              # towards the least recently used; -1: none
    int32_t newer              # towards the most recently used; -1: none
    int32_t key_len            # -1: free
    char key[LRU_KEY_INLINE]

cdef uint64_t hash_span(const char* p, Py_ssize_t n, uint64_t seed) noexcept

cdef class LruTable:
    cdef LruSlot* slots
    cdef int32_t* buckets
    cdef readonly int capacity
    cdef uint64_t bucket_mask
    cdef readonly int used
    cdef int32_t newest
    cdef int32_t oldest
    cdef int32_t next_free           # slots never used start here
    cdef int32_t free_list           # removed slots, chained by next_in_bucket
    cdef uint64_t seed
    cdef readonly unsigned long long evictions

    cdef void _unlink_recency(self, int32_t s) noexcept
    cdef void _push_newest(self, int32_t s) noexcept
    cdef void _unlink_bucket(self, int32_t s) noexcept
    cdef int find(self, const char* key, Py_ssize_t n) noexcept
    cdef int find_hashed(self, const char* key, Py_ssize_t n, uint64_t h) noexcept
    cdef int insert(self, const char* key, Py_ssize_t n) noexcept
    cdef void touch(self, int slot) noexcept
    cdef void remove(self, int slot) noexcept
    cdef void clear(self) noexcept
    cdef void _reset(self) noexcept
