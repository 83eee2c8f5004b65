"""Positive controls for every fuzz target: the unmutated seeds are accepted.

A target that refused everything would pass every fuzz test ("only the documented
refusal came out"); these make sure the decoders under fuzz really admit the inputs the
mutations start from, so a mutation that is refused is refused for what it changed.
"""

from __future__ import annotations

import seeds
import targets

from mesh.rpc import envelope


def accepted(value) -> bool:
    return value is not targets.REFUSED


def test_every_seed_frame_is_admitted_and_parsed():
    c = seeds.corpus()
    assert c.frames
    for frame in c.frames:
        env = targets.envelope_frame(frame)
        assert accepted(env) and isinstance(env, envelope.Envelope)
    for payload in c.payloads:
        assert accepted(targets.envelope_payload(payload))
    # a stranger's frame is admitted once it shows its certificate
    assert c.stranger_frames and c.credentials
    assert any(accepted(targets.envelope_frame(f, cr)) for f in c.stranger_frames for cr in c.credentials)


def test_this_meshs_seed_certificates_verify():
    c = seeds.corpus()
    verified = [cert for cert in c.certificates if accepted(targets.certificate(cert))]
    # the corpus holds others on purpose (another mesh's, expired): at least this mesh's own verify
    assert verified, "no seed certificate verifies: the certificate target refuses everything"
    assert accepted(targets.certificate(seeds.certificate(seeds.SENDER)))


def test_seed_tokens_parse():
    c = seeds.corpus()
    assert c.tokens and any(accepted(targets.token_text(t)) for t in c.tokens)


def test_seed_gossip_datagrams_and_records_decode():
    c = seeds.corpus()
    assert c.gossip and c.records
    assert all(accepted(targets.gossip_datagram(d)) for d in c.gossip)
    assert all(accepted(targets.member_record(r)) for r in c.records)


def test_seed_job_and_ask_args_are_accepted():
    from mesh.api import request_from_ask_args, route_from_args
    from mesh.jobs.wire import handover_from_wire, outcomes_from_wire

    assert request_from_ask_args(seeds.ask_args_seed())
    route_from_args({"route": seeds.route_seed()})
    handover_from_wire(seeds.handover_seed())
    outcomes_from_wire(seeds.outcomes_seed())


def test_the_seed_enrol_request_is_granted():
    out = targets.enrol(dict(targets.enrolment().seed_args), sender=seeds.STRANGER.peer_id)
    assert accepted(out) and "certificate" in out


def test_gossip_seeds_carry_records_signed_and_certified_for_real():
    from mesh.gossip.record import MemberRecord

    c = seeds.corpus()
    authority = c.net.authority
    assert isinstance(authority, seeds.CertifiedAuthority)  # not the simulator's stand-in MAC
    records = [MemberRecord.from_wire(r) for r in c.records]
    assert records and all(authority.verify_record(r) for r in records)
    body, _ = records[0].to_parts()
    tampered = MemberRecord.from_parts([body, bytes(64)])  # the same body, a signature nobody made
    assert not authority.verify_record(tampered)
    swim = targets.gossip_swim()  # the receiver the gossip targets use verifies the same way
    assert swim is not None
