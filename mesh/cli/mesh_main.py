"""``mesh``: talk to the mesh from a terminal.

    mesh ask "PROMPT"            stream an answer from the local peer
    mesh ask --embedded "..."    run a peer in this process for one prompt
    mesh info                    what the local peer is and how it is doing
    mesh keys create NAME        an API key for the OpenAI-compatible HTTP API (list, revoke)
    mesh revoke PEER             revoke a member's certificate (where `mesh init` ran)
    mesh rotate                  roll this peer's keys without stopping it (the old key is revoked)
    mesh models list             every model in the mesh: who holds it, who serves it, its size
    mesh models pull NAME        fetch a model from the peers that hold it (add, rm, pin too)
"""

from __future__ import annotations

import argparse
import json
import sys

from mesh import __version__
from mesh.cli.common import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_PEER,
    EXIT_OK,
    EXIT_USAGE,
    add_data_dir,
    fail,
    setup_logging,
)
from mesh.cli.render import answer_footer, info_table
from mesh.errors import BackendBusy, InvalidRequest, MeshError, NoAnswer, PeerUnavailable
from mesh.inference.output_format import MAX_SCHEMA_BYTES
from mesh.peerfile import read_peer_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh", description="Ask the mesh. Every peer answers prompts together.")
    p.add_argument("--version", action="version", version=f"mesh {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ask = sub.add_parser("ask", help="send a prompt and stream the answer")
    add_data_dir(ask)
    ask.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int, default=256, metavar="N", help="answer length limit (default 256)")
    ask.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature (default 0.7)")
    ask.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling (default 0.95)")
    ask.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable answers")
    ask.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="give up after (default 300)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    ask.add_argument("--embedded", action="store_true", help="run a peer in this process for this prompt")
    ask.add_argument("--model", metavar="NAME|PATH",
                     help="pin a model by name (with --embedded: the GGUF file to load)")
    ask.add_argument("--peer", metavar="ID|NAME", help="pin the peer that answers (an id prefix or a member name)")
    ask.add_argument("--session", metavar="ID", help="keep a conversation on one peer (its prompt cache is reused)")
    ask.add_argument("--local-only", action="store_true", help="never leave the mesh: no cloud, even to escalate")
    ask.add_argument("--no-escalate", action="store_true", help="take the first answer as it is")
    ask.add_argument("--threshold", type=float, default=None, metavar="C",
                     help="confidence below which the answer escalates (default: the peer's, 0.7)")
    ask.add_argument("--stop", action="append", default=None, metavar="TEXT",
                     help="end the answer before TEXT (repeatable, up to 4; the answer leaves it out)")
    ask.add_argument("--json-schema", metavar="FILE",
                     help="answer with JSON that matches the JSON Schema in FILE (sampled under a grammar)")
    ask.add_argument("--queue", action="store_true",
                     help="if nothing can answer now, queue the prompt as a durable job instead of failing")

    embed = sub.add_parser("embed", help="embed texts with a model in the mesh (unit-length vectors)")
    add_data_dir(embed)
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="the texts to embed, one vector each")
    embed.add_argument("--model", metavar="NAME", help="pin the model (vectors of different models do not compare)")
    embed.add_argument("--peer", metavar="ID|NAME", help="pin the peer that embeds")
    embed.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="give up after (default 120)")
    embed.add_argument("--json", action="store_true", help="print the full vectors as JSON")

    info = sub.add_parser("info", help="show the local peer: identity, model, traffic, refusals")
    add_data_dir(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    submit = sub.add_parser("submit", help="queue a prompt durably; prints its job id at once")
    add_data_dir(submit)
    submit.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    submit.add_argument("--system", help="system prompt")
    submit.add_argument("--max-tokens", type=int, default=256, metavar="N")
    submit.add_argument("--temperature", type=float, default=0.7, metavar="T")
    submit.add_argument("--model", metavar="NAME", help="pin a model by name")
    submit.add_argument("--local-only", action="store_true", help="never leave the mesh")
    submit.add_argument("--key", metavar="KEY", help="idempotency key: submitting it again returns the same job")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")

    jobs = sub.add_parser("jobs", help="this peer's jobs: state, where each ran, attempts, age")
    add_data_dir(jobs)
    jobs.add_argument("--json", action="store_true")
    jobs.add_argument("--limit", type=int, default=50)

    result = sub.add_parser("result", help="print a job's answer")
    add_data_dir(result)
    result.add_argument("id")
    result.add_argument("--wait", action="store_true", help="block until the job has finished")
    result.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="with --wait")
    result.add_argument("--json", action="store_true")

    cancel = sub.add_parser("cancel", help="cancel a job that has not finished (queued or running)")
    add_data_dir(cancel)
    cancel.add_argument("id")
    cancel.add_argument("--json", action="store_true")

    peers = sub.add_parser("peers", help="every member of the mesh: state, models, hardware, load")
    add_data_dir(peers)
    peers.add_argument("--json", action="store_true", help="print JSON")

    status = sub.add_parser("status", help="this peer's own view of itself and the mesh, in one screen")
    add_data_dir(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    init = sub.add_parser("init", help="create a new mesh here (its authority key and this peer's certificate)")
    add_data_dir(init)
    init.add_argument("--name", default=None, help="this peer's name (default: the host name)")

    invite = sub.add_parser("invite", help="print a short-lived, single-use join token (run where `mesh init` ran)")
    add_data_dir(invite)
    invite.add_argument("--ttl", type=float, default=15.0, metavar="MINUTES", help="token lifetime (default 15)")
    invite.add_argument("--endpoint", action="append", default=[], metavar="HOST:PORT",
                        help="address the joiner reaches this peer at (default: the running peer's addresses)")

    join = sub.add_parser("join", help="enrol this device in a mesh with a token from `mesh invite`")
    add_data_dir(join)
    join.add_argument("token")
    join.add_argument("--name", default=None, help="this peer's name (default: the host name)")

    revoke = sub.add_parser("revoke", help="revoke a member's certificate; every peer refuses it within seconds "
                                           "(run where `mesh init` ran)")
    add_data_dir(revoke)
    revoke.add_argument("peer", help="the member's name or a peer id prefix (see `mesh peers`)")
    revoke.add_argument("--json", action="store_true", help="print JSON")

    rotate = sub.add_parser("rotate", help="give the local peer new identity and transport keys without stopping "
                            "it; the mesh authority certifies them and revokes the old key")
    add_data_dir(rotate)
    rotate.add_argument("--wait", type=float, default=120.0, metavar="S",
                        help="how long to wait for the peer to finish switching (default 120)")
    rotate.add_argument("--json", action="store_true", help="print JSON")

    keys = sub.add_parser("keys", help="API keys of this peer's OpenAI-compatible HTTP API (create, list, revoke)")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    kc = keys_sub.add_parser("create", help="make a key; it is printed once and stored only as a hash")
    kc.add_argument("name", help="who or what the key is for")
    kl = keys_sub.add_parser("list", help="every key: id, name, created, revoked")
    kl.add_argument("--json", action="store_true", help="print JSON")
    kr = keys_sub.add_parser("revoke", help="revoke a key by id (a running peer refuses it at once)")
    kr.add_argument("id", help="the key's id (or a unique prefix), from `mesh keys list`")
    for kp in (kc, kl, kr):
        add_data_dir(kp)

    models = sub.add_parser("models", help="models in the mesh: list, pull from other peers, add, rm, pin")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = models_sub.add_parser("list", help="every model in the mesh: holders, where it is loaded, size")
    ml.add_argument("--json", action="store_true", help="print JSON")
    mp = models_sub.add_parser("pull", help="fetch a model from the peers that hold it, in verified pieces")
    mp.add_argument("model", help="its name, SHA-256, or a SHA-256 prefix of 12+ hex digits")
    mp.add_argument("--rate", type=float, default=None, metavar="MB_PER_S",
                    help="bandwidth cap of this pull (default: the peer's --pull-rate)")
    mp.add_argument("--pin", action="store_true", help="pin it: never evicted to make room")
    mp.add_argument("--json", action="store_true", help="print the result as JSON")
    ma = models_sub.add_parser("add", help="import a GGUF file into the local peer's model store (copied)")
    ma.add_argument("path", help="the GGUF file")
    ma.add_argument("--name", help="the name to list it under (default: from the file name)")
    ma.add_argument("--pin", action="store_true", help="pin it: never evicted to make room")
    mr = models_sub.add_parser("rm", help="remove a model from the local peer's store")
    mr.add_argument("model", help="its name, SHA-256, or a SHA-256 prefix of 12+ hex digits")
    mpin = models_sub.add_parser("pin", help="keep a model in the local peer's store (never evicted)")
    mpin.add_argument("model", help="its name, SHA-256, or a SHA-256 prefix of 12+ hex digits")
    mpin.add_argument("--off", action="store_true", help="unpin it instead")
    for sp in (ml, mp, ma, mr, mpin):
        add_data_dir(sp)

    doctor = sub.add_parser("doctor", help="explain why peers do not see each other (mDNS, ports, clocks, meshes)")
    add_data_dir(doctor)
    doctor.add_argument("--join", action="append", default=[], metavar="HOST:PORT",
                        help="also probe this peer (repeatable), e.g. one that should be reachable")
    doctor.add_argument("--wait", type=float, default=3.0, metavar="SECONDS",
                        help="how long to listen for mDNS announcements (default 3)")
    doctor.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="per-address limit for the TCP connect and the ping (default 3)")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    return p


def _read_prompt(args: argparse.Namespace) -> str | None:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.read()


def cmd_ask(args: argparse.Namespace) -> int:
    from mesh.client import Client

    prompt = _read_prompt(args)
    if not prompt or not prompt.strip():
        return fail('give a prompt: mesh ask "PROMPT" (or pipe it on stdin)', EXIT_USAGE)
    if args.embedded:
        setup_logging("warning")
        print("mesh: starting an in-process peer (loading the model)...", file=sys.stderr, flush=True)
        client = Client.embedded(args.data_dir, model=args.model, timeout_s=args.timeout)
    else:
        client = Client(args.data_dir, timeout_s=args.timeout)
    with client:
        if args.queue and not args.embedded:
            try:
                return _ask(args, client, prompt)
            except (NoAnswer, BackendBusy) as e:
                job = _submit(args, prompt)
                print(f"mesh: nothing can answer now ({e}); queued as job {job['id']}: "
                      f"`mesh result {job['id']} --wait`", file=sys.stderr)
                if args.json:
                    print(json.dumps({"queued": job}, default=str))
                return EXIT_OK
        return _ask(args, client, prompt)


def _json_schema(path: str | None) -> dict | None:
    """The JSON Schema in ``path`` (``InvalidRequest`` when it is unreadable or not JSON)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_SCHEMA_BYTES + 1)
    except OSError as e:
        raise InvalidRequest(f"--json-schema {path}: {e.strerror or e}") from None
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"--json-schema {path}: over {MAX_SCHEMA_BYTES} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"--json-schema {path} is not JSON: {e}") from None


def _ask(args: argparse.Namespace, client, prompt: str) -> int:
    stream_out = None if args.json else (lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    on_step = None if args.json else _print_step
    answer = client.ask(
        prompt,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        on_text=stream_out,
        on_step=on_step,
        peer=args.peer,
        model=None if args.embedded else args.model,
        session=args.session,
        local_only=args.local_only or None,
        no_escalate=args.no_escalate or None,
        threshold=args.threshold,
        stop=args.stop,
        json_schema=_json_schema(args.json_schema),
    )
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(answer_footer(answer), file=sys.stderr)
    return EXIT_OK


def _calls(args: argparse.Namespace, *calls: tuple[str, dict], timeout_s: float = 30.0) -> tuple[list[dict], str]:
    """Make ``calls`` ((method, args) pairs) in order over one connection to the local
    peer, then close it. Returns their results and the endpoint they went to."""
    import asyncio

    from mesh.client import Client

    with Client(args.data_dir) as client:
        async def once() -> list[dict]:
            try:
                return [await client.acall(method, params, timeout_s=timeout_s) for method, params in calls]
            finally:
                await client.aclose()

        results = asyncio.run(once())
        return results, client.address.endpoint if client.address else "?"


def _call(args: argparse.Namespace, method: str, params: dict, timeout_s: float = 30.0) -> dict:
    """One call to the local peer (see ``_calls``)."""
    return _calls(args, (method, params), timeout_s=timeout_s)[0][0]


def _submit(args: argparse.Namespace, prompt: str) -> dict:
    from mesh.client import Client

    with Client(args.data_dir) as client:
        return client.submit(
            prompt, key=getattr(args, "key", None), system=args.system, max_tokens=args.max_tokens,
            temperature=args.temperature, model=getattr(args, "model", None),
            local_only=getattr(args, "local_only", None),
        )


def cmd_submit(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args)
    if not prompt or not prompt.strip():
        return fail('give a prompt: mesh submit "PROMPT" (or pipe it on stdin)', EXIT_USAGE)
    job = _submit(args, prompt)
    if args.json:
        print(json.dumps(job, default=str))
    else:
        print(job["id"])
        print(f"queued; see it with `mesh result {job['id']} --wait`", file=sys.stderr)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from mesh.cli.render import jobs_table

    doc = _call(args, "job.list", {"limit": args.limit})
    print(json.dumps(doc, indent=2, default=str) if args.json else jobs_table(doc["jobs"], doc["counts"]))
    return EXIT_OK


def cmd_result(args: argparse.Namespace) -> int:
    import time

    deadline = time.monotonic() + args.timeout
    while True:
        job = _call(args, "job.get", {"id": args.id})["job"]
        if job["state"] in ("done", "failed", "cancelled") or not args.wait:
            break
        if time.monotonic() > deadline:
            return fail(f"job {args.id} still {job['state']} after {args.timeout:g}s")
        if sys.stderr.isatty():
            print(f"\rjob {args.id}: {job['state']}, attempt {job['attempts']} ...", end="", file=sys.stderr, flush=True)
        time.sleep(0.5)
    if args.json:
        print(json.dumps(job, default=str))
        return EXIT_OK if job["state"] == "done" else EXIT_ERROR
    if job["state"] == "done":
        print(job["result_text"])
        stats = job.get("stats") or {}
        print(f"-- job {job['id']} answered by {str(stats.get('peer', '?'))[:12]} with {stats.get('model')}"
              f" · confidence {stats.get('confidence', 0):.2f} · attempts {job['attempts']}", file=sys.stderr)
        return EXIT_OK
    if job["state"] in ("failed", "cancelled"):
        return fail(f"job {job['id']} {job['state']}: {job.get('error') or ''}")
    return fail(f"job {job['id']} is {job['state']}; add --wait to wait for it", EXIT_BUSY)


def cmd_cancel(args: argparse.Namespace) -> int:
    doc = _call(args, "job.cancel", {"id": args.id})
    if args.json:
        print(json.dumps(doc, default=str))
    elif doc["cancelled"]:
        print(f"cancelled job {args.id}")
    else:
        return fail(f"job {args.id} had already finished: it is {doc['job']['state']}")
    return EXIT_OK


def _print_step(step: dict) -> None:
    from mesh.cli.render import step_line

    line = step_line(step)
    if line:
        if step.get("restart"):
            sys.stdout.write("\n")
        print(line, file=sys.stderr, flush=True)


def cmd_embed(args: argparse.Namespace) -> int:
    """``mesh embed TEXT...``: a line per text (dimensions, norm, first values), or ``--json``."""
    import math

    from mesh.client import Client

    with Client(args.data_dir, timeout_s=args.timeout) as client:
        try:
            out = client.embed_result(args.texts, model=args.model, peer=args.peer, timeout_s=args.timeout)
        except NoAnswer as e:
            return fail(str(e), EXIT_ERROR)
    vectors = out.floats()
    if args.json:
        print(json.dumps({"model": out.model, "peer": out.peer, "prompt_tokens": out.prompt_tokens,
                          "embeddings": [{"index": i, "text": t, "embedding": v}
                                         for i, (t, v) in enumerate(zip(args.texts, vectors, strict=True))]}))
        return EXIT_OK
    print(f"{out.model} on {out.peer[:12]}: {len(vectors)} vector(s) of {out.dimensions} dimensions, "
          f"{out.prompt_tokens} tokens")
    print(f"{'#':>3}  {'dims':>5}  {'norm':>6}  {'first values':<44}  text")
    for i, (text, v) in enumerate(zip(args.texts, vectors, strict=True)):
        norm = math.sqrt(math.fsum(x * x for x in v))
        head = " ".join(f"{x:+.4f}" for x in v[:5])
        label = text if len(text) <= 40 else text[:39] + "…"
        print(f"{i:>3}  {len(v):>5}  {norm:>6.4f}  {head:<44}  {label}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    (doc,), endpoint = _calls(args, ("info", {}), timeout_s=10)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(info_table(doc, endpoint=endpoint))
    return EXIT_OK


def _members(args: argparse.Namespace) -> tuple[dict, dict, str]:
    (members, info), endpoint = _calls(args, ("members", {}), ("info", {}), timeout_s=10)
    return members, info, endpoint


def cmd_peers(args: argparse.Namespace) -> int:
    from mesh.cli.render import members_of, peers_table

    members, _, _ = _members(args)
    if args.json:
        print(json.dumps(members["members"], indent=2, default=str))
    else:
        print(peers_table(members_of(members)))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from mesh.cli.render import status_screen

    members, info, endpoint = _members(args)
    if args.json:
        print(json.dumps({"info": info, **members}, indent=2, default=str))
    else:
        print(status_screen(info, members, endpoint=endpoint))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from mesh.config import default_name
    from mesh.identity.joining import create_mesh
    from mesh.identity.keys import Identity
    from mesh.identity.transport import TransportKeys
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir).ensure()
    identity, _ = Identity.load_or_create(data.identity_key)
    transport, _ = TransportKeys.load_or_create(data.transport_key)
    membership = create_mesh(data, identity, name=args.name or default_name(), transport=transport)
    print(f"created mesh {membership.mesh_id_text}")
    print(f"this device holds its authority key: {data.authority_key} (keep it safe; it signs every member)")
    print("next: start the peer (mesh-peer), then `mesh invite` to add another device")
    return EXIT_OK


def cmd_invite(args: argparse.Namespace) -> int:
    import time

    from mesh.discovery.seeds import parse_seed
    from mesh.identity.joining import make_invite
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir)
    running = read_peer_file(data)
    endpoints = [parse_seed(e) for e in args.endpoint] or list(running.advertise or [running.endpoint])
    token = make_invite(data, running.public_raw, endpoints, ttl_s=args.ttl * 60, now=time.time(),
                        inviter_curve=running.transport_public)
    print(token.to_text())
    print(f"valid for {args.ttl:g} minutes, once; it reaches this peer at {', '.join(endpoints)}.", file=sys.stderr)
    print("on the new device:  mesh-peer --join-token TOKEN   (or: mesh join TOKEN, then mesh-peer)", file=sys.stderr)
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    import asyncio

    import zmq.asyncio

    from mesh.config import default_name
    from mesh.identity.joining import enrol
    from mesh.identity.keys import Identity
    from mesh.identity.transport import TransportKeys
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir).ensure()
    identity, _ = Identity.load_or_create(data.identity_key)
    transport, _ = TransportKeys.load_or_create(data.transport_key)

    async def go():
        ctx = zmq.asyncio.Context()
        try:
            return await enrol(data, identity, args.token, name=args.name or default_name(), ctx=ctx,
                               transport=transport)
        finally:
            ctx.term()

    membership = asyncio.run(go())
    print(f"joined mesh {membership.mesh_id_text} as {membership.name}; now start the peer: mesh-peer")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from mesh.identity.revocation_service import REVOKE_METHOD
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir)
    if not data.authority_key.exists():
        return fail(f"this device does not hold the mesh authority key ({data.authority_key}); run `mesh revoke` "
                    "on the device where the mesh was created (`mesh init`), with its mesh-peer running")
    doc = _call(args, REVOKE_METHOD, {"peer": args.peer}, timeout_s=10)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("already"):
        print(f"{doc['name'] or '?'} ({doc['peer_id']}) was already revoked")
    else:
        print(f"revoked {doc['name'] or '?'} ({doc['peer_id']}), certificate {doc['serial'][:16]}; "
              f"sent to {doc.get('told', 0)} live member(s), gossip carries it to the rest")
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    import time

    from mesh.identity.rotation_service import ROTATE_LOCAL_METHOD
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir)
    doc = _call(args, ROTATE_LOCAL_METHOD, {}, timeout_s=30)
    # the peer switches in the background: it is done when peer.json names the new id
    deadline, now_running = time.monotonic() + max(0.0, args.wait), None
    while time.monotonic() < deadline:
        try:
            now_running = read_peer_file(data)
        except PeerUnavailable:  # being rewritten, or the peer between its two stacks
            now_running = None
        if now_running is not None and now_running.peer_id == doc["peer_id"]:
            break
        time.sleep(0.1)
    switched = now_running is not None and now_running.peer_id == doc["peer_id"]
    doc["switched"] = switched
    if switched:
        doc["endpoint"] = now_running.endpoint
        advertise = now_running.advertise
        doc["join"] = f"{advertise[0].removeprefix('tcp://')}@{doc['transport_key']}" if advertise else None
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        rows = [("name", doc["name"]), ("old peer id", f"{doc['old_peer_id']} (revoked once the switch is done)"),
                ("new peer id", doc["peer_id"]), ("transport key", doc["transport_key"])]
        if doc.get("join"):
            rows.append(("join here with", f"--join {doc['join']}"))
        width = max(len(k) for k, _ in rows)
        print("rotated the keys of this peer" if switched else "new keys certified; the peer is still switching")
        for k, v in rows:
            print(f"  {k.ljust(width)}  {v}")
        print("Seeds written as HOST:PORT@KEY for this peer elsewhere need the new key.", file=sys.stderr)
    if not switched:
        return fail(f"the peer did not finish switching within {args.wait:g}s; see its log "
                    "(a restart of mesh-peer completes the switch)")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    import time

    from mesh.http.apikeys import ApiKeyStore
    from mesh.paths import resolve_data_dir

    data = resolve_data_dir(args.data_dir)
    store = ApiKeyStore(data.api_keys)
    if args.keys_command == "create":
        data.ensure()
        key, token = store.create(args.name)
        print(token)
        print(f"key {key.id} ({key.name}): shown this once, stored only as a hash; "
              "use it as Authorization: Bearer KEY (revoke: mesh keys revoke " + key.id + ")", file=sys.stderr)
    elif args.keys_command == "revoke":
        key = store.revoke(args.id)
        print(f"revoked key {key.id} ({key.name}); a running peer refuses it from its next request")
    else:
        keys = store.entries()
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
        elif not keys:
            print("no API keys; make one with: mesh keys create NAME")
        else:
            rows = [("ID", "NAME", "CREATED", "STATE")] + [
                (k.id, k.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)),
                 "revoked" if k.revoked else "active") for k in keys]
            widths = [max(len(r[i]) for r in rows) for i in range(3)]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from mesh.config import RpcConfig
    from mesh.doctor import diagnose
    from mesh.doctor.findings import has_problem
    from mesh.doctor.probe import observe
    from mesh.doctor.report import json_report, text_report
    from mesh.paths import resolve_data_dir
    from mesh.rpc.envelope import SUPPORTED_VERSIONS

    if not (0 < args.wait <= 60 and 0 < args.timeout <= 60):
        return fail("--wait and --timeout must be in (0, 60] seconds", EXIT_USAGE)
    setup_logging("error")
    data = resolve_data_dir(args.data_dir)
    if not args.json:
        print(f"mesh doctor: listening for mDNS for {args.wait:g} s and probing known peers...", file=sys.stderr)
    try:
        obs = asyncio.run(observe(data, joins=args.join, wait_s=args.wait, timeout_s=args.timeout))
    except TimeoutError:  # the outer deadline of observe(): a bug or a stuck library, never a hang
        return fail("mesh doctor: the probes did not finish in time; run it again with --json for details")
    findings = diagnose(obs, window_s=RpcConfig.lan().timestamp_window_s, versions=SUPPORTED_VERSIONS)
    if args.json:
        print(json.dumps(json_report(findings, obs), indent=2))
    else:
        print(text_report(findings, obs))
    return EXIT_ERROR if has_problem(findings) else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mesh.cli.render import model_row, models_table

    action = args.models_command
    if action == "list":
        doc = _call(args, "models.mesh", {})
        print(json.dumps(doc, indent=2) if args.json else models_table(doc))
        return EXIT_OK
    if action == "pull":
        return _pull(args)
    if action == "add":
        path = Path(args.path).expanduser().resolve()  # the peer runs elsewhere: never a relative path
        if not path.is_file():
            return fail(f"no file at {path}; give the path of a GGUF model file", EXIT_USAGE)
        print(f"importing {path} (copied and hashed; a big model takes a while) ...", file=sys.stderr)
        doc = _call(args, "models.add", {"path": str(path), "name": args.name, "pin": args.pin}, timeout_s=3600)
        print(f"added {model_row(doc['model'])}")
    elif action == "rm":
        print(f"removed {model_row(_call(args, 'models.rm', {'model': args.model})['model'])}")
    elif action == "pin":
        doc = _call(args, "models.pin", {"model": args.model, "pinned": not args.off})
        print(f"{'unpinned' if args.off else 'pinned'} {model_row(doc['model'])}")
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    from mesh.cli.render import model_row, pull_progress
    from mesh.client import Client

    tty = sys.stderr.isatty()
    shown = {"at": -1}

    def progress(p: dict) -> None:
        line = pull_progress(p)
        if tty:
            sys.stderr.write("\r" + line.ljust(78))
            sys.stderr.flush()
        else:  # a log: a line per tenth
            tenth = (10 * p["pieces_done"]) // max(p["pieces"], 1)
            if tenth != shown["at"]:
                shown["at"] = tenth
                print(line, file=sys.stderr)

    with Client(args.data_dir) as client:
        result = client.pull(args.model, rate_mb_s=args.rate, pin=args.pin, on_progress=progress)
    if tty:
        sys.stderr.write("\n")
    if args.json:
        print(json.dumps(result, indent=2))
    elif result.get("already"):
        print(f"already here: {model_row(result['model'])}")
    else:
        p = result["progress"]
        rate = result["bytes_fetched"] / max(result["seconds"], 1e-6) / 1e6
        resumed = f", {p['resumed_pieces']} pieces resumed from an earlier pull" if p["resumed_pieces"] else ""
        print(f"pulled {model_row(result['model'])} in {result['seconds']:.1f} s ({rate:.1f} MB/s) "
              f"from {len(p['by_source'])} peer(s){resumed}")
        for peer, n in sorted(result["bad_pieces"].items()):
            print(f"  refused {n} bad piece(s) from {peer[:12]}: it was not asked again", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "ask": cmd_ask, "embed": cmd_embed, "info": cmd_info, "peers": cmd_peers, "status": cmd_status,
        "init": cmd_init, "invite": cmd_invite, "join": cmd_join,
        "submit": cmd_submit, "jobs": cmd_jobs, "result": cmd_result, "cancel": cmd_cancel,
        "doctor": cmd_doctor, "keys": cmd_keys, "revoke": cmd_revoke,
        "rotate": cmd_rotate, "models": cmd_models,
    }
    try:
        if args.command in commands:
            return commands[args.command](args)
    except PeerUnavailable as e:
        return fail(str(e), EXIT_NO_PEER)
    except NoAnswer as e:
        return fail(f"{e}. Add --queue to keep the prompt as a durable job (`mesh submit`) until something can answer",
                    EXIT_ERROR)
    except BackendBusy as e:
        return fail(f"{e} (the peer is at capacity; try again shortly)", EXIT_BUSY)
    except InvalidRequest as e:
        return fail(str(e), EXIT_USAGE)
    except MeshError as e:
        return fail(str(e), EXIT_ERROR)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
