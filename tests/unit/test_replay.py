from mesh.rpc.replay import NonceCache


def test_cap_evicts_oldest_and_counts():
    c = NonceCache(window_ms=1000, max_entries=3)
    for i in range(5):
        assert c.check_and_record(b"s", bytes([i]), ts_ms=0, now_ms=0)
    assert len(c) == 3 and c.evictions == 2
    assert not c.check_and_record(b"s", bytes([4]), ts_ms=0, now_ms=0)


def test_same_nonce_from_another_sender_is_fine():
    c = NonceCache(window_ms=1000, max_entries=10)
    assert c.check_and_record(b"a", b"n", ts_ms=0, now_ms=0)
    assert c.check_and_record(b"b", b"n", ts_ms=0, now_ms=0)
    assert not c.check_and_record(b"a", b"n", ts_ms=0, now_ms=500)


def test_expiry():
    c = NonceCache(window_ms=1000, max_entries=10)
    c.check_and_record(b"a", b"n", ts_ms=0, now_ms=0)
    c.check_and_record(b"a", b"m", ts_ms=0, now_ms=10_000)
    assert len(c) == 1
