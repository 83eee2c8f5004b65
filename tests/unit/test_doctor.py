"""``mesh doctor``'s rules, without a network: observations built by hand, findings checked.

One test (or a few) per cause; the real thing runs in tests/test_netns_doctor.py."""

from __future__ import annotations

import json

import pytest

from mesh.discovery.hints import DropReason, instance_name
from mesh.doctor import Severity, diagnose
from mesh.doctor.findings import has_problem, skew_s
from mesh.doctor.model import (
    Interface,
    LocalView,
    Observations,
    Probe,
    Reach,
    Sighting,
    Target,
    merge_targets,
    sighting_from_record,
)
from mesh.doctor.report import json_report, text_report
from mesh.gossip.view import MemberView

OURS = "meshours1"
OTHER = "meshother2"
ME = "a" * 26
P1 = "b" * 26
P2 = "c" * 26
NOW = 1_700_000_000.0
LAN = (Interface("lo", "127.0.0.1", 8), Interface("eth0", "10.0.0.1", 24))
VERSIONS = range(1, 2)


def local(**kw) -> LocalView:
    base = dict(peer_id=ME, mesh=OURS, running=True, advertise=("tcp://10.0.0.1:7411",), interfaces=LAN,
                mdns_browsed_s=3.0)
    base.update(kw)
    return LocalView(**base)


def target(ip="10.0.0.2", port=7411, *, sources=("join",), peer_id=None, name=None) -> Target:
    return Target(f"tcp://{ip}:{port}", tuple(sources), peer_id, name)


def ok(ip="10.0.0.2", *, peer=P1, mesh=OURS, remote_time=NOW, sources=("join",), name=None) -> Probe:
    return Probe(target(ip, sources=sources, name=name), Reach.OPEN, ip=ip, rpc="ok", peer_id=peer, mesh=mesh,
                 remote_time=remote_time, sent_at=NOW - 0.01, received_at=NOW + 0.01)


def refused_by(code: str, message: str = "", *, ip="10.0.0.2", mesh=None, peer=P1) -> Probe:
    return Probe(target(ip), Reach.OPEN, ip=ip, rpc=code, message=message, peer_id=peer, mesh=mesh,
                 sent_at=NOW, received_at=NOW)


def seen(peer=P1, *, mesh=OURS, version=1, addresses=("10.0.0.2",), port=7411) -> Sighting:
    return Sighting(peer, mesh, version, tuple(addresses), port)


def run(view=None, *, sightings=(), probes=(), members=()) -> list:
    obs = Observations(view or local(), tuple(sightings), tuple(probes), {}, tuple(members))
    return diagnose(obs, window_s=30.0, versions=VERSIONS)


def codes(findings) -> dict[str, Severity]:
    return {f.code: f.severity for f in findings}


# -- a healthy mesh --------------------------------------------------------------------


def test_a_peer_heard_over_mdns_and_answering_is_no_problem():
    findings = run(sightings=[seen(), seen(ME, addresses=("10.0.0.1",))], probes=[ok(sources=("mdns",))])
    assert findings == [] and not has_problem(findings)


# -- multicast -------------------------------------------------------------------------


def test_reachable_but_never_heard_on_the_same_subnet_is_multicast_blocked():
    findings = run(probes=[ok(sources=("known_peers",), name="h2")])
    (f,) = findings
    assert (f.code, f.severity) == ("multicast_blocked", Severity.ERROR)
    assert "h2" in f.subject and "10.0.0.2:7411" in f.seen
    assert "--join 10.0.0.2:7411" in f.next and "isolation" in f.next and "IGMP" in f.next
    assert has_problem(findings)


def test_multicast_blocked_is_a_warning_when_join_or_gossip_already_reaches_the_peer():
    assert codes(run(probes=[ok(sources=("join",))])) == {"multicast_blocked": Severity.WARNING}
    members = [MemberView(peer_id=P1, name="h2", state="alive")]
    assert codes(run(probes=[ok(sources=("members",))], members=members)) == {"multicast_blocked": Severity.WARNING}


def test_a_peer_on_another_subnet_is_not_a_multicast_problem():
    assert codes(run(probes=[ok("192.168.5.9")])) == {"other_subnet": Severity.INFO}


def test_no_multicast_verdict_when_mdns_could_not_listen():
    findings = run(local(mdns_error="no interfaces", mdns_browsed_s=0.0), probes=[ok()])
    assert codes(findings) == {"mdns_unavailable": Severity.WARNING}


# -- interfaces ------------------------------------------------------------------------


def test_peer_bound_to_loopback_only_while_others_are_on_the_lan():
    findings = run(local(advertise=("tcp://127.0.0.1:7411",)), sightings=[seen()], probes=[ok(sources=("mdns",))])
    assert codes(findings) == {"loopback_only": Severity.ERROR}
    assert "--rpc-host 0.0.0.0" in findings[0].next


def test_peers_on_a_subnet_we_do_not_advertise_on():
    two_nics = (*LAN, Interface("wlan0", "192.168.1.5", 24))
    view = local(interfaces=two_nics, advertise=("tcp://10.0.0.1:7411",))
    findings = run(view, sightings=[seen(addresses=("192.168.1.7",))], probes=[ok("192.168.1.7", sources=("mdns",))])
    (f,) = findings
    assert (f.code, f.severity) == ("wrong_interface", Severity.ERROR)
    assert "wlan0" in f.seen and "192.168.1.0/24" in f.seen and "--advertise 192.168.1.5" in f.next


def test_advertising_an_address_this_host_does_not_have():
    findings = run(local(advertise=("tcp://10.0.0.99:7411",)), sightings=[seen()], probes=[ok(sources=("mdns",))])
    assert codes(findings) == {"wrong_interface": Severity.WARNING} or "wrong_interface" in codes(findings)
    assert any("10.0.0.99" in f.seen for f in findings)


def test_interfaces_are_not_judged_without_a_running_peer():
    findings = run(local(running=False, advertise=()), sightings=[seen()], probes=[ok(sources=("mdns",))])
    assert codes(findings) == {"no_local_peer": Severity.INFO}


# -- ports -----------------------------------------------------------------------------


@pytest.mark.parametrize("reach, words", [
    (Reach.REFUSED, ["refused", "--rpc-port"]),
    (Reach.TIMEOUT, ["no answer", "ufw allow 7411/tcp"]),
])
def test_port_closed(reach, words):
    findings = run(probes=[Probe(target(), reach, detail="")])
    (f,) = findings
    assert (f.code, f.severity) == ("port_closed", Severity.ERROR)
    text = f.seen + f.next
    assert all(w in text for w in words)


def test_unreachable_host():
    findings = run(probes=[Probe(target("nas.lan"), Reach.UNREACHABLE, detail="cannot resolve nas.lan")])
    assert codes(findings) == {"unreachable": Severity.ERROR}


def test_open_port_without_a_mesh_answer():
    assert codes(run(probes=[refused_by("no_reply", peer=None)])) == {"no_reply": Severity.WARNING}


def test_a_peer_whose_transport_key_nobody_gave_is_not_pinged_and_the_fix_is_named():
    (f,) = run(probes=[refused_by("no_transport_key", peer=None)])
    assert f.code == "transport_key_unknown" and f.severity is Severity.INFO and "@KEY" in f.next


# -- clocks ----------------------------------------------------------------------------


def test_clock_skew_from_the_ping_time():
    findings = run(sightings=[seen()], probes=[ok(remote_time=NOW + 95, sources=("mdns",))])
    (f,) = findings
    assert (f.code, f.severity) == ("clock_skew", Severity.ERROR)
    assert "95.0 s ahead" in f.seen and "NTP" in f.next


def test_clock_skew_from_a_stale_timestamp_refusal():
    p = refused_by("rejected:stale_timestamp", "stale_timestamp: timestamp +42.5s from this peer's clock")
    assert skew_s(p) == -42.5
    (f,) = run(probes=[p])
    assert (f.code, f.severity) == ("clock_skew", Severity.ERROR)
    assert "42.5 s behind" in f.seen and "refuses" in f.seen


def test_clock_drift_past_half_the_window_is_a_warning_and_small_drift_is_nothing():
    assert codes(run(sightings=[seen()], probes=[ok(remote_time=NOW - 20, sources=("mdns",))])) == {
        "clock_skew": Severity.WARNING}
    assert run(sightings=[seen()], probes=[ok(remote_time=NOW + 2, sources=("mdns",))]) == []


def test_a_refusal_message_that_does_not_parse_still_names_the_clock():
    (f,) = run(probes=[refused_by("rejected:stale_timestamp", "garbage")])
    assert f.code == "clock_skew" and "clock window" in f.seen


# -- meshes ----------------------------------------------------------------------------


def test_another_mesh_on_the_lan_is_named_and_only_informational():
    findings = run(sightings=[seen(P2, mesh=OTHER, addresses=("10.0.0.3",))])
    (f,) = findings
    assert (f.code, f.severity) == ("other_mesh_nearby", Severity.INFO)
    assert OTHER in f.seen and OURS in f.seen and not has_problem(findings)


def test_a_peer_we_expect_announcing_another_mesh_is_an_error():
    p = refused_by("rejected:bad_credential", "bad_credential: other_mesh", mesh=OTHER)
    findings = run(sightings=[seen(mesh=OTHER)], probes=[p])
    assert codes(findings) == {"other_mesh": Severity.ERROR}
    assert all(OTHER in f.seen for f in findings)


def test_a_peer_refusing_us_as_unknown():
    (f,) = run(probes=[refused_by("rejected:unknown_sender", "unknown_sender")])
    assert (f.code, f.severity) == ("not_member", Severity.ERROR)
    findings = run(local(mesh=None), probes=[refused_by("unauthenticated", "join first")])
    assert codes(findings) == {"not_member": Severity.ERROR, "no_membership": Severity.WARNING}


# -- versions --------------------------------------------------------------------------


def test_version_mismatch_from_txt_and_from_a_refusal():
    (f,) = run(sightings=[seen(version=2)], probes=[ok(sources=("mdns",))])
    assert (f.code, f.severity) == ("version_mismatch", Severity.ERROR) and "version 2" in f.seen
    assert codes(run(probes=[refused_by("bad_version")])) == {"version_mismatch": Severity.ERROR}
    assert codes(run(probes=[refused_by("rejected:bad_version", "version 1; this peer speaks 2..2")])) == {
        "version_mismatch": Severity.ERROR}


# -- duplicate ids ---------------------------------------------------------------------


def test_our_own_id_announced_by_another_host():
    findings = run(sightings=[seen(ME, addresses=("10.0.0.9",))])
    assert codes(findings) == {"duplicate_peer_id": Severity.ERROR}
    assert "10.0.0.9" in findings[0].seen and "identity.key" in findings[0].next


def test_our_own_id_answering_from_another_address():
    findings = run(sightings=[seen(ME, addresses=("10.0.0.1",))], probes=[ok("10.0.0.9", peer=ME)])
    assert codes(findings) == {"duplicate_peer_id": Severity.ERROR}


def test_one_id_announced_from_two_hosts():
    findings = run(sightings=[seen(addresses=("10.0.0.2",)), seen(addresses=("10.0.0.3",))])
    assert "duplicate_peer_id" in codes(findings)


def test_a_multi_homed_peer_is_not_a_duplicate():
    assert run(sightings=[seen(addresses=("10.0.0.2", "10.0.1.2"))]) == []


# -- the data dir ----------------------------------------------------------------------


def test_no_membership_and_no_local_peer():
    findings = run(local(mesh=None, peer_id=None, running=False, advertise=()))
    assert codes(findings) == {"no_membership": Severity.WARNING, "no_local_peer": Severity.INFO}


def test_findings_come_errors_first():
    findings = run(local(mesh=None), probes=[Probe(target(), Reach.REFUSED)])
    assert [f.severity for f in findings] == sorted((f.severity for f in findings), key=lambda s: s.rank)


# -- records and targets ---------------------------------------------------------------


def record(peer=P1, *, mesh=OTHER, version="1", addresses=("10.0.0.2",), port=7411, name=None):
    return dict(name=name or instance_name(peer), properties={b"id": peer.encode(), b"mesh": mesh.encode(),
                b"v": version.encode()}, addresses=list(addresses), port=port)


def test_records_of_any_mesh_and_version_are_kept_and_malformed_ones_dropped():
    s = sighting_from_record(**record(version="7"))
    assert s == Sighting(P1, OTHER, 7, ("10.0.0.2",), 7411)
    assert sighting_from_record(**record(mesh="NOT OK")) is DropReason.BAD_MESH
    assert sighting_from_record(**record(port=0)) is DropReason.BAD_PORT
    assert sighting_from_record(**record(name=instance_name(P2))) is DropReason.NAME_MISMATCH
    bad = record()
    bad["properties"][b"mesh"] = b"\xff\xfe"
    assert sighting_from_record(**bad) is DropReason.BAD_CHARSET


def test_targets_merge_by_address_and_are_capped():
    a = Target("tcp://10.0.0.2:7411", ("join",))
    b = Target("tcp://10.0.0.2:7411", ("members",), P1, "h2")
    merged = merge_targets([a, b, Target("tcp://10.0.0.3:7411", ("mdns",))])
    assert merged[0] == Target("tcp://10.0.0.2:7411", ("join", "members"), P1, "h2") and len(merged) == 2
    many = [Target(f"tcp://10.0.1.{i}:7411", ("known_peers",)) for i in range(100)]
    assert len(merge_targets(many, limit=32)) == 32


# -- report ----------------------------------------------------------------------------


def test_reports_text_and_json():
    obs = Observations(local(), (), (ok(sources=("known_peers",)),), {"bad_mesh": 1}, ())
    findings = diagnose(obs, window_s=30.0, versions=VERSIONS)
    text = text_report(findings, obs)
    assert "ERROR multicast_blocked" in text and "seen:" in text and "next:" in text
    doc = json.loads(json.dumps(json_report(findings, obs)))
    assert doc["ok"] is False and doc["findings"][0]["code"] == "multicast_blocked"
    assert doc["mdns"]["dropped"] == {"bad_mesh": 1} and doc["probes"][0]["rpc"] == "ok"
    clean = Observations(local(), (), (), {}, ())
    assert "no problems found" in text_report(diagnose(clean, window_s=30.0, versions=VERSIONS), clean)
