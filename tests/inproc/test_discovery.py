"""Discovery: the pure checks of mDNS records, --join seeds, remembered peers, and a real
mDNS round trip inside a network namespace (in-process, on a thread that joined it)."""

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import zeroconf
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from mesh.discovery import (
    SERVICE_TYPE,
    DiscoveryError,
    DiscoveryStats,
    DropReason,
    Hint,
    MdnsDiscovery,
    RememberedPeers,
    Source,
    parse_seed,
    parse_seeds,
    seed_hints,
)
from mesh.discovery.hints import (
    MAX_ADDRESSES,
    MAX_TXT_BYTES,
    hint_from_record,
    instance_name,
    peer_id_of_name,
    txt_for,
)
from mesh.discovery.seeds import KNOWN_PEERS_FILE, MAX_FILE_BYTES
from mesh.errors import ConfigError
from mesh.identity.keys import Identity
from mesh.rpc.envelope import PROTOCOL_VERSION
from support import netns

netns_lab = netns.netns_lab  # the namespace fixture, for the tests below

MESH = "testmesh0001"
OTHER = "othermesh0002"
NOW = 1_800_000_000.0


def pid(c: str) -> str:
    """A well-formed peer id made of one base32 letter, for readable tests."""
    return c * 26


A, B, ME = pid("a"), pid("b"), pid("m")


def record(**over):
    """Keyword arguments of hint_from_record for a good record of peer A; override any."""
    props = {k.encode(): v.encode() for k, v in txt_for(peer_id=A, mesh=MESH, version=1).items()}
    props.update(over.pop("props", {}))
    for k in over.pop("drop", ()):
        props.pop(k, None)
    args = {
        "name": instance_name(A),
        "properties": props,
        "addresses": ["10.77.0.9"],
        "port": 7411,
        "mesh": MESH,
        "own_peer_id": ME,
        "now": NOW,
        "versions": range(1, 2),
    }
    args.update(over)
    return args


# -- records -> hints --------------------------------------------------------------------


def test_good_record_becomes_a_hint():
    h = hint_from_record(**record())
    assert h == Hint(
        address="tcp://10.77.0.9:7411", source=Source.MDNS, seen_at=NOW, peer_id=A, mesh=MESH, version=1
    )


def test_real_peer_id_round_trips():
    me = Identity.generate().peer_id_text
    h = hint_from_record(**record(name=instance_name(me), props={b"id": me.encode()}))
    assert isinstance(h, Hint) and h.peer_id == me
    assert peer_id_of_name(instance_name(me)) == me


def test_unknown_txt_keys_are_tolerated():
    h = hint_from_record(**record(props={b"future": b"thing", b"flag": None}))
    assert isinstance(h, Hint)


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"drop": [b"id"]}, DropReason.MISSING_FIELD),
        ({"drop": [b"mesh"]}, DropReason.MISSING_FIELD),
        ({"drop": [b"v"]}, DropReason.MISSING_FIELD),
        ({"props": {b"v": None}}, DropReason.MISSING_FIELD),  # bare key, no "="
        ({"props": {b"mesh": b""}}, DropReason.MISSING_FIELD),
        ({"props": {b"id": "ä".encode() * 13}}, DropReason.BAD_CHARSET),
        ({"props": {b"mesh": b"\xff" * 10}}, DropReason.BAD_CHARSET),
        ({"props": {b"id": b"a" * 25}}, DropReason.BAD_PEER_ID),
        ({"props": {b"id": b"a" * 27}}, DropReason.BAD_PEER_ID),
        ({"props": {b"id": b"A" * 26}}, DropReason.BAD_PEER_ID),
        ({"props": {b"id": b"1" * 26}}, DropReason.BAD_PEER_ID),  # not base32
        ({"props": {b"id": b"a" * 25 + b"\n"}}, DropReason.BAD_PEER_ID),
        ({"props": {b"mesh": b"short"}}, DropReason.BAD_MESH),
        ({"props": {b"mesh": b"x" * 65}}, DropReason.BAD_MESH),
        ({"props": {b"mesh": b"Testmesh0001"}}, DropReason.BAD_MESH),
        ({"props": {b"mesh": b"test-mesh-01"}}, DropReason.BAD_MESH),
        ({"props": {b"v": b"0"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": b"abc"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": b"-1"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": b"1.0"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": b"65536"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": b"000001"}}, DropReason.BAD_VERSION),
        ({"props": {b"v": "١".encode()}}, DropReason.BAD_CHARSET),  # a non-ASCII digit
        ({"port": 0}, DropReason.BAD_PORT),
        ({"port": 65536}, DropReason.BAD_PORT),
        ({"port": None}, DropReason.BAD_PORT),
        ({"port": True}, DropReason.BAD_PORT),
        ({"name": instance_name(B)}, DropReason.NAME_MISMATCH),
        ({"name": "whatever._http._tcp.local."}, DropReason.NAME_MISMATCH),
        ({"addresses": []}, DropReason.NO_ADDRESS),
        ({"addresses": ["0.0.0.0", "224.0.0.251", "fe80::1", "not-an-ip", "::"]}, DropReason.NO_ADDRESS),
        ({"props": {b"pad": b"x" * MAX_TXT_BYTES}}, DropReason.TOO_LARGE),
        ({"props": {f"k{i}".encode(): b"1" for i in range(40)}}, DropReason.TOO_LARGE),
        ({"own_peer_id": A}, DropReason.OWN),
        ({"mesh": OTHER}, DropReason.OTHER_MESH),
        ({"props": {b"v": b"2"}}, DropReason.UNSUPPORTED_VERSION),
    ],
)
def test_bad_records_are_dropped_with_their_reason(over, reason):
    assert hint_from_record(**record(**over)) is reason


def test_a_malformed_record_of_another_mesh_counts_as_malformed():
    assert hint_from_record(**record(mesh=OTHER, props={b"v": b"x"})) is DropReason.BAD_VERSION


def test_addresses_ipv4_first_loopback_last_deduplicated_and_capped():
    h = hint_from_record(**record(addresses=["127.0.0.1", "2001:db8::5", "10.0.0.2", "10.0.0.2", "fe80::9"]))
    assert h.address == "tcp://10.0.0.2:7411"
    assert h.alternates == ("tcp://[2001:db8::5]:7411", "tcp://127.0.0.1:7411")
    many = hint_from_record(**record(addresses=[f"10.1.0.{i}" for i in range(1, 100)]))
    assert 1 + len(many.alternates) == MAX_ADDRESSES


def test_stats_count_by_reason():
    stats = DiscoveryStats()
    outcomes = [
        hint_from_record(**record()),
        hint_from_record(**record(mesh=OTHER)),
        hint_from_record(**record(mesh=OTHER)),
        hint_from_record(**record(port=0)),
    ]
    for o in outcomes:
        stats.record(o)
    assert stats.accepted == 1
    assert stats[DropReason.OTHER_MESH] == 2 and stats[DropReason.BAD_PORT] == 1
    assert stats.as_dict() == {"accepted": 1, "gone": 0, "dropped_bad_port": 1, "dropped_other_mesh": 2}


def test_instance_names():
    assert instance_name(A) == f"{A}.{SERVICE_TYPE}"
    assert peer_id_of_name(instance_name(A).upper()) is None  # ids are lowercase
    assert peer_id_of_name("x._mesh._tcp.local.") is None
    assert peer_id_of_name(f"{A}._other._tcp.local.") is None


@pytest.mark.parametrize(
    "kw",
    [
        {"peer_id": "nope"},
        {"mesh": "UPPER-case"},
        {"version": 0},
    ],
)
def test_announcing_a_record_we_would_drop_fails_at_once(kw):
    args = {"peer_id": A, "mesh": MESH, "version": 1, **kw}
    with pytest.raises(ValueError):
        txt_for(**args)
    with pytest.raises(ConfigError):
        MdnsDiscovery(port=7411, on_hint=print, **args)


def test_mdns_refuses_bad_port_and_interface():
    with pytest.raises(ConfigError):
        MdnsDiscovery(peer_id=A, mesh=MESH, port=0, on_hint=print)
    with pytest.raises(ConfigError):
        MdnsDiscovery(peer_id=A, mesh=MESH, port=1, on_hint=print, interfaces=["eth0"])
    with pytest.raises(ConfigError):
        MdnsDiscovery(peer_id=A, mesh=MESH, port=1, on_hint=print, interfaces=["fd00::1"])


# -- seeds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, address",
    [
        ("10.0.0.1:7411", "tcp://10.0.0.1:7411"),
        (" 10.0.0.1:1 ", "tcp://10.0.0.1:1"),
        ("[::1]:7411", "tcp://[::1]:7411"),
        ("[2001:DB8:0::1]:65535", "tcp://[2001:db8::1]:65535"),
        ("Laptop.Example.com:80", "tcp://laptop.example.com:80"),
        ("gpu-box:7411", "tcp://gpu-box:7411"),
        ("gpu-box.:7411", "tcp://gpu-box:7411"),
        ("tcp://10.0.0.1:7411", "tcp://10.0.0.1:7411"),
    ],
)
def test_parse_seed(text, address):
    assert parse_seed(text) == address


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "empty"),
        ("host", "port is missing"),
        ("host:", "port must be"),
        ("host:0", "port must be"),
        ("host:65536", "port must be"),
        ("host:http", "port must be"),
        ("host:+80", "port must be"),
        ("::1:7411", "brackets"),
        ("fe80::1", "brackets"),
        ("[::1", "missing ']'"),
        ("[::1]7411", "':PORT'"),
        ("[10.0.0.1]:1", "not an IPv6"),
        ("-bad-.com:1", "neither"),
        ("a..b:1", "neither"),
        ("under_score:1", "neither"),
        ("999.1.1.1:1", "not a valid IPv4"),
        ("http://x:1/path", "path"),
        ("x" * 64 + ":1", "neither"),
    ],
)
def test_bad_seeds_say_what_is_wrong(text, says):
    with pytest.raises(ConfigError) as e:
        parse_seed(text)
    assert says in str(e.value)
    assert "--join" in str(e.value)


def test_seed_default_port_and_dedup():
    assert parse_seed("box", default_port=7411) == "tcp://box:7411"
    assert parse_seed("[::1]", default_port=7411) == "tcp://[::1]:7411"
    assert parse_seeds(["b:1", "a:1", "B:1", "tcp://a:1"]) == ("tcp://b:1", "tcp://a:1")
    hints = seed_hints(parse_seeds(["a:1"]), now=NOW)
    assert hints == [Hint(address="tcp://a:1", source=Source.SEED, seen_at=NOW)]


# -- remembered peers --------------------------------------------------------------------


def gossip(peer: str, address: str, seen_at: float) -> Hint:
    return Hint(address=address, source=Source.GOSSIP, seen_at=seen_at, peer_id=peer)


def test_remembered_peers_keep_the_newest_sighting_of_each_peer(tmp_path):
    store = RememberedPeers(tmp_path / KNOWN_PEERS_FILE)
    assert store.merge([gossip(A, "tcp://10.0.0.1:1", NOW), gossip(B, "tcp://10.0.0.2:1", NOW + 1)])
    assert store.merge([gossip(A, "tcp://10.0.0.7:1", NOW + 5)])  # A moved
    assert not store.merge([gossip(A, "tcp://10.0.0.1:1", NOW + 2)])  # stale news
    assert not store.merge([Hint(address="tcp://x:1", source=Source.SEED, seen_at=NOW)])  # no peer id
    assert not store.merge([gossip("not-an-id", "tcp://x:1", NOW)])
    assert not store.merge([gossip(pid("c"), "tcp://x", NOW)])  # no port
    assert [(h.peer_id, h.address, h.source) for h in store.hints()] == [
        (A, "tcp://10.0.0.7:1", Source.REMEMBERED),
        (B, "tcp://10.0.0.2:1", Source.REMEMBERED),
    ]


def test_remembered_peers_are_bounded_keeping_the_most_recent(tmp_path):
    store = RememberedPeers(tmp_path / KNOWN_PEERS_FILE, max_entries=256)
    ids = [Identity.generate().peer_id_text for _ in range(300)]
    store.merge(gossip(p, f"tcp://10.9.{i // 250}.{i % 250 + 1}:7411", NOW + i) for i, p in enumerate(ids))
    assert len(store) == 256
    assert {h.peer_id for h in store.hints()} == set(ids[-256:])
    store.save()
    assert len(RememberedPeers.load(store.path, max_entries=10)) == 10


def test_remembered_peers_persist_atomically_with_private_mode(tmp_path):
    path = tmp_path / KNOWN_PEERS_FILE
    store = RememberedPeers(path)
    store.merge([gossip(A, "tcp://[2001:db8::1]:7411", NOW), gossip(B, "tcp://box.lan:7411", NOW + 1)])
    assert store.dirty
    store.save()
    assert not store.dirty
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == [KNOWN_PEERS_FILE]  # no temp file left behind
    again = RememberedPeers.load(path)
    assert again.hints() == store.hints() and not again.dirty
    # a rewrite replaces the file whole
    store.forget(A)
    store.save()
    assert [h.peer_id for h in RememberedPeers.load(path).hints()] == [B]


def test_missing_file_is_an_empty_store(tmp_path):
    assert len(RememberedPeers.load(tmp_path / "nope.json")) == 0


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": 99, "peers": []}',
        b'{"format": 1, "peers": {}}',
    ],
)
def test_corrupt_file_is_ignored_not_fatal(tmp_path, content, caplog):
    path = tmp_path / KNOWN_PEERS_FILE
    path.write_bytes(content)
    assert len(RememberedPeers.load(path)) == 0
    assert caplog.records  # said so in the log


def test_malformed_entries_are_skipped(tmp_path):
    path = tmp_path / KNOWN_PEERS_FILE
    good = {"id": A, "address": "tcp://10.0.0.1:7411", "seen_at": NOW}
    bad = [
        {"id": B, "address": "tcp://10.0.0.2:7411"},  # no seen_at
        {"id": B, "address": "tcp://10.0.0.2:7411", "seen_at": "yesterday"},
        {"id": B, "address": "tcp://10.0.0.2:7411", "seen_at": True},
        {"id": "bogus", "address": "tcp://10.0.0.2:7411", "seen_at": NOW},
        {"id": B, "address": "ftp://10.0.0.2", "seen_at": NOW},
        {"id": B, "address": 7, "seen_at": NOW},
        "just a string",
    ]
    path.write_text(json.dumps({"format": 1, "peers": [good, *bad]}))
    store = RememberedPeers.load(path)
    assert [h.peer_id for h in store.hints()] == [A]
    infinite = {"format": 1, "peers": [{"id": B, "address": "tcp://a:1", "seen_at": float("inf")}]}
    path.write_text(json.dumps(infinite))  # JSON's "Infinity"
    assert len(RememberedPeers.load(path)) == 0


def test_oversize_file_is_ignored(tmp_path):
    path = tmp_path / KNOWN_PEERS_FILE
    path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    assert len(RememberedPeers.load(path)) == 0


def test_unreadable_or_unwritable_is_a_config_error(tmp_path):
    (tmp_path / KNOWN_PEERS_FILE).mkdir()
    with pytest.raises(ConfigError):
        RememberedPeers.load(tmp_path / KNOWN_PEERS_FILE)
    store = RememberedPeers(tmp_path / "missing-dir" / KNOWN_PEERS_FILE)
    store.merge([gossip(A, "tcp://a:1", NOW)])
    with pytest.raises(ConfigError):
        store.save()


# -- real mDNS, in a namespace -----------------------------------------------------------


async def wait_for(predicate, timeout_s: float = 5.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def round_trip(ip: str) -> None:
    seen: list[Hint] = []
    gone: list[str] = []
    browser = MdnsDiscovery(
        peer_id=B, mesh=MESH, port=7001, on_hint=seen.append, on_gone=gone.append, interfaces=[ip]
    )
    announcer = MdnsDiscovery(peer_id=A, mesh=MESH, port=7000, on_hint=seen.append, interfaces=[ip], browse=False)
    await browser.start()
    try:
        await announcer.start()
        assert announcer.addresses == [ip]
        await wait_for(lambda: seen)
        (h,) = seen
        assert (h.peer_id, h.mesh, h.address, h.version, h.source) == (
            A, MESH, f"tcp://{ip}:7000", PROTOCOL_VERSION, Source.MDNS)  # the newest envelope version it sends
        assert browser.stats[DropReason.OWN] == 1  # heard itself, ignored it

        await announcer.aclose()  # goodbye packets
        took = await wait_for(lambda: gone)
        assert gone == [A] and took < 2.0

        # hostile and foreign records on the same LAN: counted, never handed on
        raw = AsyncZeroconf(interfaces=[ip])
        try:
            records = [
                (instance_name(pid("c")), {"id": pid("c"), "mesh": OTHER, "v": "1"}, 7002),
                (instance_name(pid("d")), {"id": pid("d"), "mesh": MESH, "v": "one"}, 7003),
                (instance_name(pid("e")), {"id": pid("f"), "mesh": MESH, "v": "1"}, 7004),
                (f"hello.{SERVICE_TYPE}", {"id": "hello"}, 7005),
            ]
            await asyncio.gather(*(
                raw.async_register_service(
                    AsyncServiceInfo(SERVICE_TYPE, name, port=port, properties=props, parsed_addresses=[ip])
                )
                for name, props, port in records
            ))
            expected = {
                DropReason.OTHER_MESH: 1,
                DropReason.BAD_VERSION: 1,
                DropReason.NAME_MISMATCH: 1,
                DropReason.MISSING_FIELD: 1,
            }
            await wait_for(lambda: all(browser.stats[r] == n for r, n in expected.items()))
            assert len(seen) == 1 and browser.stats.accepted == 1
        finally:
            await raw.async_close()

    finally:
        await browser.aclose()


def test_mdns_round_trip_in_a_namespace(netns_lab):
    lab = netns_lab(1)
    lab[0].call(asyncio.run, asyncio.wait_for(round_trip(lab[0].ip), 30))


def test_the_same_peer_id_on_a_second_host_is_refused(netns_lab):
    lab = netns_lab(2)
    first = lab[0].popen(
        [sys.executable, "-m", "mesh.discovery", "--mesh", MESH, "--id", B, "--ip", lab[0].ip, "--seconds", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert json.loads(first.stdout.readline())["event"] == "started"

    async def twin():
        d = MdnsDiscovery(peer_id=B, mesh=MESH, port=7009, on_hint=print, interfaces=[lab[1].ip])
        with pytest.raises(DiscoveryError, match="already announces"):
            await d.start()
        other = MdnsDiscovery(peer_id=A, mesh=MESH, port=7009, on_hint=print, interfaces=[lab[1].ip])
        await other.start()  # while a different id starts fine
        await other.aclose()

    lab[1].call(asyncio.run, asyncio.wait_for(twin(), 20))


def test_no_interface_is_a_discovery_error(netns_lab):
    lab = netns_lab(1)

    async def main():
        # a fresh namespace's only other interface is lo: nothing to announce on
        lab[0].run(["ip", "addr", "flush", "dev", "eth0"])
        d = MdnsDiscovery(peer_id=A, mesh=MESH, port=7000, on_hint=print)
        with pytest.raises(DiscoveryError, match="no network interface"):
            await d.start()

    lab[0].call(asyncio.run, main())


def test_zeroconf_errors_are_mapped(netns_lab):
    lab = netns_lab(1)

    async def main():
        d = MdnsDiscovery(peer_id=A, mesh=MESH, port=7000, on_hint=print, interfaces=["10.99.0.1"])
        with pytest.raises(DiscoveryError):  # an address this host does not have
            await d.start()

    lab[0].call(asyncio.run, main())
    assert issubclass(DiscoveryError, Exception) and not issubclass(DiscoveryError, zeroconf.Error)


# -- transport keys in hints ---------------------------------------------------------------

KEY = bytes(range(32))


def test_a_record_may_carry_the_peers_transport_key():
    from mesh.identity.transport import key_text

    props = {b"c": key_text(KEY).encode()}
    h = hint_from_record(**record(props=props))
    assert isinstance(h, Hint) and h.transport_key == KEY
    assert hint_from_record(**record(props={b"c": b"not-a-key"})) is DropReason.BAD_TRANSPORT_KEY
    assert txt_for(peer_id=A, mesh=MESH, version=1, transport_key=key_text(KEY))["c"] == key_text(KEY)
    with pytest.raises(ValueError):
        txt_for(peer_id=A, mesh=MESH, version=1, transport_key="zz")


def test_join_seeds_take_an_optional_transport_key():
    from mesh.discovery.seeds import parse_seed_with_key, seed_text, split_seed_text
    from mesh.identity.transport import key_text

    assert parse_seed_with_key("a:1") == ("tcp://a:1", None)
    assert parse_seed_with_key(f"10.0.0.1:7411@{key_text(KEY)}") == ("tcp://10.0.0.1:7411", KEY)
    assert parse_seed_with_key(f"[::1]@{key_text(KEY).upper()}", default_port=7411) == ("tcp://[::1]:7411", KEY)
    with pytest.raises(ConfigError, match="transport key"):
        parse_seed_with_key("a:1@nope")
    assert split_seed_text(seed_text("tcp://a:1", KEY)) == ("tcp://a:1", KEY)
    assert split_seed_text("tcp://a:1") == ("tcp://a:1", None)


def test_remembered_peers_keep_their_transport_keys(tmp_path):
    store = RememberedPeers(tmp_path / KNOWN_PEERS_FILE)
    store.merge([Hint(address="tcp://10.0.0.1:1", source=Source.GOSSIP, seen_at=NOW, peer_id=A, transport_key=KEY),
                 gossip(B, "tcp://10.0.0.2:1", NOW)])
    store.save()
    back = {h.peer_id: h.transport_key for h in RememberedPeers.load(store.path).hints()}
    assert back == {A: KEY, B: None}


def test_the_key_book_prefers_certified_keys_over_hints():
    from mesh.rpc.keybook import KeyBook, KeySource

    book = KeyBook(max_entries=2)
    other = bytes(32)
    assert book.learn("tcp://a:1", KEY, KeySource.CERTIFIED)
    assert not book.learn("tcp://a:1", other, KeySource.HINT)  # a spoofed mDNS record cannot redirect it
    assert book.key_for("tcp://a:1") == KEY
    assert book.learn("tcp://b:1", other, KeySource.HINT) and book.learn("tcp://b:1", KEY, KeySource.PINNED)
    assert not book.learn("tcp://c:1", b"short", KeySource.PINNED)
    book.learn("tcp://c:1", KEY, KeySource.HINT)
    assert len(book) == 2 and book.key_for("tcp://a:1") is None  # bounded, oldest first
