"""Hostile length headers and nesting: every decoder refuses them with its typed error,
promptly, and without allocating more than a small multiple of the input (a 5-byte
header must never make a decoder reserve gigabytes)."""

from __future__ import annotations

import time
import tracemalloc

import mutate
import pytest
import seeds
import targets

from mesh.identity.certificate import MAX_CERT_BYTES

MAX_FRAME = 1 << 20

HEADERS = [h for h in mutate.HOSTILE if len(h) < 100]


def _measure(fn, *args, **kw):
    fn(*args, **kw)  # warm up: lazy imports and caches are not the decoder's allocation
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak, elapsed


def _bounded(size_in: int, peak: int) -> bool:
    return peak < 8 * size_in + 512 * 1024


def _envelope_payloads():
    yield from HEADERS
    # a map whose "b" claims 4 G entries, behind real fields
    yield b"\x87\xa1v\x01\xa1k\xa4call\xa2id\xc4\x10" + b"\x00" * 16 + b"\xa4from\xc4\x10" + seeds.SENDER.peer_id \
        + b"\xa2ts\x00\xa1n\xc4\x10" + b"\x00" * 16 + b"\xa1b\xdf\xff\xff\xff\xff"
    yield b"\x91" * (MAX_FRAME - 200)  # nesting bomb as large as a frame may be
    yield b"\x81\xa1b" * 2000 + b"\xc0"
    yield b"\xdc\xff\xff" + b"\xc0" * 65535  # a real 64 K array of nils
    yield b"\xde\x7f\xff" + b"\xa1a\xc0" * 0x7fff  # 32 K duplicate keys


@pytest.mark.parametrize("payload", list(_envelope_payloads()), ids=lambda p: p[:6].hex() + f"-{len(p)}")
def test_envelope_refuses_hostile_payloads_in_bounded_memory(payload):
    out, peak, elapsed = _measure(targets.envelope_payload, payload)
    assert out is targets.REFUSED
    assert _bounded(len(payload), peak), f"peak {peak} bytes for a {len(payload)}-byte payload"
    assert elapsed < 10


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p[:6].hex())
def test_gossip_refuses_hostile_headers_in_bounded_memory(header):
    for data in (header, b"\x94\x01\x00" + header + b"\x90", b"\x94\x01\x05\x81\xa1e" + header + b"\x90"):
        out, peak, _ = _measure(targets.gossip_datagram, data)
        assert out is targets.REFUSED
        assert _bounded(len(data), peak), f"peak {peak} for {data[:16].hex()}"
        out, peak, _ = _measure(targets.member_record, data)
        assert out is targets.REFUSED and _bounded(len(data), peak)


def test_gossip_nesting_and_maximum_size_datagrams_are_refused_promptly():
    for data in (b"\x91" * (512 * 1024), b"\x94\x01\x04\x80" + b"\xdd\x00\x00\x10\x00" + b"\x90" * 4096,
                 b"\x94\x01\x04\x80\xdc\x00\x41" + b"\x91\x00" * 65):
        out, peak, elapsed = _measure(targets.gossip_datagram, data)
        assert out is targets.REFUSED and _bounded(len(data), peak) and elapsed < 10


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p[:6].hex())
def test_certificates_and_tokens_refuse_hostile_headers_in_bounded_memory(header):
    for data in (header + b"\x00" * 64, b"\x89" + header + b"\x00" * 64):
        out, peak, _ = _measure(targets.certificate, data)
        assert out is targets.REFUSED and _bounded(len(data), peak)
        out, peak, _ = _measure(targets.token_raw, data[:-64] or header)
        assert out is targets.REFUSED and _bounded(len(data), peak)


def test_oversize_inputs_are_refused_before_parsing():
    big = b"\x00" * (MAX_CERT_BYTES + 1)
    assert targets.certificate(big) is targets.REFUSED
    assert targets.token_text("mesh1-" + "a" * 5000) is targets.REFUSED
    frame, peak, _ = _measure(targets.envelope_frame, b"\x00" * (MAX_FRAME + 1))
    assert frame is targets.REFUSED and peak < 64 * 1024  # refused on its length alone
