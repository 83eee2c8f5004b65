"""SHA-256 chaining values: check a piece of a file and, with every piece, the whole file,
in one pass over its bytes.

SHA-256 reads its input in 64-byte blocks, carrying a 32-byte state (the chaining value)
from each block to the next; the digest is the state after the last block plus the
padding. When a file is cut into pieces whose size is a multiple of 64, the state at
each piece boundary is fixed by the bytes before it. A manifest that lists those states
(``Manifest.chain``) lets a puller check piece ``i`` alone: start from state ``i`` (and
the byte count before it), hash the piece, and the result must be state ``i + 1`` (for
the last piece: the file's SHA-256, after padding). When every piece passes, the whole
file hashes to its content address, by construction: no second pass over the file.

``hashlib`` does not let a hash start from a given state, so this binds OpenSSL's
``libcrypto`` (the library ``hashlib`` itself uses, SHA-NI accelerated) through
``ctypes``: its ``SHA256_CTX`` has been a public struct with the same layout since
OpenSSL 0.9.8. ``available()`` says whether it loaded and passed a self-test against
``hashlib``; without it, pulls fall back to per-piece hashes and a second whole-file
pass (``Manifest.check_piece``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import struct

BLOCK = 64
STATE_BYTES = 32
_STATE = struct.Struct(">8I")


class _Ctx(ctypes.Structure):  # openssl/sha.h: SHA256state_st
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_uint32 * 16), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


def _candidates() -> list[str]:
    names = []
    try:  # the libcrypto this Python's hashlib is linked against, when it is a shared one
        import _hashlib

        with open("/proc/self/maps") as f:
            names += sorted({line.split()[-1] for line in f if "libcrypto" in line and "/" in line})
        del _hashlib
    except (ImportError, OSError):
        pass
    found = ctypes.util.find_library("crypto")
    names += [n for n in (found, "libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib") if n]
    return names


@functools.cache
def _lib():
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)  # CDLL: calls release the GIL
            for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            continue
        lib.SHA256_Update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]
        lib.SHA256_Init.argtypes = [ctypes.POINTER(_Ctx)]
        if _self_test(lib):
            return lib
    return None


def _self_test(lib) -> bool:
    data = bytes(range(256)) * 5  # 1,280 bytes: 20 blocks
    try:
        ctx = _Ctx()
        lib.SHA256_Init(ctypes.byref(ctx))
        _update(lib, ctx, data[:640])
        state = _STATE.pack(*ctx.h)
        again = State(state, 640, lib=lib)
        again.update(data[640:])
        return again.digest() == hashlib.sha256(data).digest() and \
            State.initial(lib=lib).update(data).digest() == hashlib.sha256(data).digest()
    except (OSError, ValueError, ctypes.ArgumentError):
        return False


def available() -> bool:
    return _lib() is not None


def _update(lib, ctx: _Ctx, data) -> None:
    if isinstance(data, bytes):
        ptr, n = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p), len(data)
    else:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if n == 0:
            return
        if view.readonly:  # ctypes cannot point into a read-only buffer: copy (rare: callers pass bytes)
            data = bytes(view)
            ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        else:
            ptr = ctypes.addressof(ctypes.c_char.from_buffer(view))
    if n and lib.SHA256_Update(ctypes.byref(ctx), ptr, n) != 1:
        raise ValueError("SHA256_Update failed")


class State:
    """A SHA-256 in progress, started from a chaining value after ``length`` bytes
    (a multiple of 64). ``ValueError`` if libcrypto is not there (``available()``)."""

    def __init__(self, state: bytes, length: int, *, lib=None) -> None:
        self._lib = lib or _lib()
        if self._lib is None:
            raise ValueError("SHA-256 chaining needs OpenSSL's libcrypto, which is not loadable here")
        if len(state) != STATE_BYTES or length < 0 or length % BLOCK:
            raise ValueError("a chaining value is 32 bytes, after a whole number of 64-byte blocks")
        self._ctx = _Ctx()
        self._lib.SHA256_Init(ctypes.byref(self._ctx))
        self._ctx.h[:] = _STATE.unpack(state)
        bits = length * 8
        self._ctx.Nl, self._ctx.Nh = bits & 0xFFFFFFFF, bits >> 32
        self.length = length

    @classmethod
    def initial(cls, *, lib=None) -> State:
        return cls(INITIAL, 0, lib=lib)

    def update(self, data) -> State:
        _update(self._lib, self._ctx, data)
        self.length += memoryview(data).nbytes
        return self

    def chaining(self) -> bytes:
        """The state after the bytes so far; they must be a whole number of blocks."""
        if self.length % BLOCK:
            raise ValueError(f"no chaining value after {self.length} bytes (not a multiple of {BLOCK})")
        return _STATE.pack(*self._ctx.h)

    def digest(self) -> bytes:
        """The SHA-256 of everything hashed from the start (ends this state)."""
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctypes.byref(self._ctx))
        return out.raw


INITIAL = _STATE.pack(0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)  # FIPS 180-4, 5.3.3


def check_piece(data, *, start: bytes, offset: int, end: bytes, last: bool) -> bool:
    """Whether ``data``, hashed from chaining value ``start`` after ``offset`` bytes,
    reaches ``end``: the next piece's chaining value, or (``last``) the file's SHA-256."""
    s = State(start, offset).update(data)
    return (s.digest() if last else s.chaining()) == end
