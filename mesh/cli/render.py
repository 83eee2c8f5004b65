"""Human-readable output for the CLI: an answer's footer and aligned tables."""

from __future__ import annotations

import time

from mesh.api import Answer
from mesh.gossip.view import BadMeta, MemberView


def short_id(peer_id: str) -> str:
    return peer_id[:12]


def step_line(step: dict) -> str:
    """One line for a routing step while an answer streams (to stderr)."""
    if step.get("no_route"):
        return f"-- step {step.get('n', 0) + 1}: {step.get('reason')}: no route ({step['no_route']})"
    if step.get("kind") == "cloud":
        return f"-- step {step.get('n', 0) + 1}: {step.get('reason')} -> cloud model {step.get('model')}"
    if step.get("n", 0) == 0 and step.get("attempt", 0) == 0:
        return ""  # the first choice is told in the footer
    what = "retrying on" if step.get("attempt") else f"step {step.get('n', 0) + 1}: {step.get('reason')} ->"
    return f"-- {what} {step.get('name') or short_id(str(step.get('peer')))} ({step.get('model')})"


def _why(a: Answer) -> str:
    r = a.route or {}
    if not r:
        return ""
    why = f" · chosen: {r.get('choice')}"
    if r.get("score_s") is not None:
        why += f", expected {r['score_s']:.2f} s"
    ru = r.get("runner_up")
    if isinstance(ru, dict):
        score = f" {ru['score_s']:.2f} s" if ru.get("score_s") is not None else ""
        why += f"; runner-up {ru.get('name') or short_id(str(ru.get('peer')))}{score}"
    return why


def _path(a: Answer) -> str:
    if not a.path or len(a.path) < 2:
        return ""
    steps = []
    for p in a.path:
        who = p.get("model") or "no route"
        conf = f" {p['confidence']:.2f}" if isinstance(p.get("confidence"), (int, float)) else ""
        steps.append(f"{who}{conf}")
    return "\n-- escalated: " + " -> ".join(steps)


def answer_footer(a: Answer) -> str:
    name = (a.route or {}).get("name")
    who = f"{name} ({short_id(a.peer)})" if name else ("the cloud" if a.peer == "cloud" else f"peer {short_id(a.peer)}")
    return (
        f"-- answered by {who} with {a.model} · confidence {a.confidence:.2f}"
        f" (least likely token {a.min_token_prob:.2f}) · {a.prompt_tokens} prompt + {a.completion_tokens}"
        f" completion tokens · {a.tokens_per_s:.1f} tok/s · first token {a.time_to_first_token_s * 1000:.0f} ms"
        f" · {a.finish_reason}{_why(a)}"
    ) + _path(a)


def table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def info_table(doc: dict, *, endpoint: str) -> str:
    model = doc.get("model", {})
    rpc = doc.get("rpc", {})
    rows = [
        ("peer", str(doc.get("peer"))),
        ("address", endpoint),
        ("version", f"{doc.get('version')} (protocol {doc.get('protocol')})"),
        ("uptime", f"{doc.get('uptime_s', 0):.0f} s"),
        ("model", f"{model.get('name')} ({model.get('quantisation') or '?'}, {model.get('parameters', 0) / 1e6:.0f}M params)"
                  if model.get("name") else "none"),
        ("context", f"{model.get('context_length')} tokens"),
        ("speed", f"{model.get('tokens_per_s', 0):.1f} tok/s"),
        ("capacity", f"{model.get('parallel')} at once, {model.get('queue_limit')} queued before busy"),
        *engine_rows(doc.get("engine")),
        *model_set_rows(doc.get("models")),
        ("answers", str(doc.get("answers"))),
        ("calls", f"{rpc.get('calls_ok', 0)} ok, {rpc.get('calls_failed', 0)} failed, "
                  f"{rpc.get('calls_cancelled', 0)} cancelled, {rpc.get('in_flight', 0)} in flight"),
    ]
    refused = {k: v for k, v in rpc.get("rejections", {}).items() if v}
    rows.append(("refused frames", ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"))
    return table(rows)


def model_set_rows(models: list | None) -> list[tuple[str, str]]:
    """The other models this peer serves on demand (mesh.inference.model_set), one row each."""
    rows = []
    for m in (models or [])[1:]:  # the first is the primary, shown above
        state = m.get("state", "?") + (", pinned" if m.get("pinned") else "")
        if m.get("loads"):
            state += f", loaded {m['loads']}x" + (f" (last {m['load_s']:.1f} s)" if m.get("load_s") else "")
        if m.get("problem"):
            state += f"; last load failed: {m['problem']}"
        rows.append(("also serves", f"{m.get('name')}: {state}"))
    return rows


def engine_rows(engine: dict | None) -> list[tuple[str, str]]:
    """The engine's state (and why, when it is not ready), its CPU kernels and threads, the CPU."""
    if not isinstance(engine, dict):
        return []
    state = str(engine.get("state", "?"))
    if state != "ready" and engine.get("reason"):
        state += f": {engine.get('reason')}"
    if engine.get("restarts"):
        state += f" ({engine.get('restarts')} restarts)"
    rows = [("engine", state)]
    build = engine.get("build") or {}
    if build:
        rows.append(("engine build", f"llama-cpp-python {build.get('llama_cpp_python', '?')}, CPU variant "
                                     f"{build.get('variant', '?')} ({build.get('reason', '')}), "
                                     f"{build.get('threads', '?')} threads, pid {engine.get('pid')}"))
    cpu = engine.get("cpu") or {}
    if cpu:
        rows.append(("cpu", f"{cpu.get('model', '?')} [{cpu.get('arch', '?')}: {' '.join(cpu.get('flags') or [])}]"))
    return rows


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _hardware(m: MemberView) -> str:
    if m.meta is None:
        return "-"
    hw = m.meta.hw
    parts = [f"{hw.cpu_count or '?'} cpu", f"{(hw.ram_total_mb or 0) / 1024:.0f}G ram"]
    if hw.gpu:
        parts.append(hw.gpu)
    if hw.on_battery:
        parts.append("battery")
    return ", ".join(parts)


def _load(m: MemberView) -> str:
    if m.meta is None:
        return f"- ({m.meta_problem})" if m.meta_problem else "-"
    tps = max((x.tokens_per_s for x in m.models), default=0)
    return f"{m.meta.load.running} active, {m.meta.load.waiting} queued, {tps:.0f} tok/s"


def grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def peers_table(members: list[MemberView]) -> str:
    order = {"alive": 0, "suspect": 1, "left": 2, "dead": 3}
    rows = []
    for m in sorted(members, key=lambda m: (order.get(m.state, 9), m.name, m.peer_id)):
        rows.append([
            m.name + (" (this peer)" if m.is_self else ""),
            short_id(m.peer_id),
            m.address.removeprefix("tcp://") if m.address else "-",
            _state(m),
            _models(m),
            _hardware(m),
            _load(m),
            _ago(m.last_heard_s),
        ])
    return grid(["NAME", "PEER", "ADDRESS", "STATE", "MODELS", "HARDWARE", "LOAD", "LAST HEARD"], rows)


def _models(m: MemberView) -> str:
    """Its models (on disk or loaded), the layers of a split one by peer, and what it lends."""
    meta = m.meta
    if meta is None:
        return "-"
    text = ", ".join(x.name + ("" if x.loaded else " (on disk)") for x in meta.models) if m.models else "-"
    if meta.split:
        text += " [layers: " + ", ".join(f"{p.name or short_id(p.peer)} {p.layers}" for p in meta.split) + "]"
    if meta.lend is not None:
        text += f" (lends {meta.lend.free_mb}/{meta.lend.offer_mb} MB free)"
    return text


def _state(m: MemberView) -> str:
    if m.replaced_by:
        return f"rotated -> {short_id(m.replaced_by)}"
    if m.revoked:
        return "revoked"
    engine = m.meta.engine if m.meta is not None else None
    state = m.state
    if engine is not None and engine.state != "ready" and state == "alive":
        state += f", engine {engine.state}"
    return state


def status_screen(info: dict, members: dict, *, endpoint: str) -> str:
    """``members``: a peer's ``members`` answer (views read with ``MemberView.from_wire``)."""
    views = members_of(members)
    me = next((m for m in views if m.is_self), None)
    counts: dict[str, int] = {}
    for m in views:
        counts[m.state] = counts.get(m.state, 0) + 1
    stats = members.get("stats", {})
    head = info_table(info, endpoint=endpoint)
    rows = [
        ("name", str(info.get("name") or (me.name if me else "-"))),
        ("mesh", str(info.get("mesh") or "-")),
        ("join here with", _join_line(list(me.addresses) if me else [], info.get("transport_key"))),
        ("certificate", _certificate(info.get("certificate"))),
        ("incarnation", str(me.incarnation) if me else "-"),
        ("members", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "just this peer"),
        ("jobs", ", ".join(f"{n} {s}" for s, n in sorted((info.get("jobs") or {}).items()) if n) or "none"),
        ("waiting to sync", _sync(info.get("sync"))),
        *_memory_pool_rows(info.get("memory_pool")),
        ("gossip", f"{sum((stats.get('received') or {}).values())} messages in, "
                   f"{sum((stats.get('sent') or {}).values())} out, {members.get('rejected_records', 0)} records refused"),
    ]
    return head + "\n" + table(rows) + "\n\n" + peers_table(views)


def members_of(answer: dict) -> list[MemberView]:
    """The views in a peer's ``members`` answer; a malformed entry is shown as such, not a crash."""
    out = []
    for i, d in enumerate(answer.get("members") or [] if isinstance(answer, dict) else []):
        try:
            out.append(MemberView.from_wire(d))
        except BadMeta as e:
            out.append(MemberView(peer_id=f"?{i}", name=f"(unreadable entry: {e})", state="?"))
    return out


def _join_line(addresses: list, transport_key: str | None) -> str:
    """What another member of this mesh passes to reach this peer: --join HOST:PORT@KEY."""
    if not addresses or not transport_key:
        return "-"
    return f"--join {str(addresses[0]).removeprefix('tcp://')}@{transport_key}"


def _certificate(cert: dict | None) -> str:
    """Validity, renewal and (after mesh rotate) the peer id this one succeeded."""
    if not cert:
        return "-"
    day = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
    text = f"valid until {day(cert['expires_at'])}, renews from {day(cert['renews_at'])}"
    if cert.get("predecessor"):
        text += f"; rotated from {short_id(cert['predecessor'])}"
    return text


def _memory_pool_rows(pool: dict | None) -> list[tuple[str, str]]:
    """What this peer lends, and where its split model's layers are (issue 16)."""
    if not isinstance(pool, dict):
        return []
    rows = []
    lending = pool.get("lending")
    if isinstance(lending, dict):
        holders = ", ".join(f"{short_id(str(h.get('peer')))} {h.get('mb')} MB" for h in lending.get("holders") or [])
        refused = sum((lending.get("refused") or {}).values()) + sum(
            ((lending.get("tunnel") or {}).get("refused") or {}).values())
        rows.append(("lending", f"{lending.get('reserved_mb', 0)} of {lending.get('offer_mb', 0)} MB reserved"
                                f"{' by ' + holders if holders else ''}; {lending.get('streams', 0)} tunnel stream(s); "
                                f"{refused} refused"))
    split = pool.get("split")
    if isinstance(split, dict):
        layers = ", ".join(f"{p.get('name') or short_id(str(p.get('peer')))} {p.get('layers')}"
                           for p in split.get("layers") or [])
        rows.append(("split model", f"{split.get('model')} ({split.get('file_mb')} MB, --models-ram "
                                    f"{split.get('budget_mb')} MB): " + (f"slots {layers}" if layers else
                                                                         f"not placed: {split.get('problem')}")))
    return rows


def _sync(sync: dict | None) -> str:
    if not sync:
        return "-"
    held, handed = sync.get("outcomes_held", 0), sync.get("handed_over", 0)
    if not held and not handed:
        return "nothing"
    return (f"{held} result(s) held for peers that are offline or not yet reached, "
            f"{handed} job(s) of this peer running elsewhere")


def jobs_table(jobs: list[dict], counts: dict) -> str:
    import time

    now = time.time()
    rows = []
    for j in jobs:
        stats = j.get("stats") or {}
        rows.append([
            str(j.get("id")), str(j.get("state")), short_id(str(j.get("ran_on") or stats.get("peer") or "-")),
            str(j.get("attempts")), _ago(now - float(j.get("created_at") or now)),
            (j.get("prompt") or "").replace("\n", " ")[:40],
        ])
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n) or "no jobs"
    return grid(["JOB", "STATE", "RAN ON", "ATTEMPTS", "AGE", "PROMPT"], rows) + f"\n{summary}"


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _params(n: int) -> str:
    return "" if not n else f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def model_row(m: dict) -> str:
    """One model of a store, in a line: name, SHA-256 prefix, size, quantisation."""
    extra = ", ".join(x for x in (_params(m.get("parameters", 0)), m.get("quantisation", ""),
                                  "pinned" if m.get("pinned") else "") if x)
    return f"{m['name']} ({m['sha256'][:12]}, {_size(m['size'])}{', ' + extra if extra else ''})"


def models_table(doc: dict) -> str:
    rows = [[m["name"], m["sha256"][:12], _size(m["size"]), _params(m["parameters"]), m["quantisation"],
             str(m["context_length"] or ""), ", ".join(short_id(p) for p in m["holders"]),
             ", ".join(short_id(p) for p in m["loaded_on"]) or "-"] for m in doc["models"]]
    out = grid(["MODEL", "SHA256", "SIZE", "PARAMS", "QUANT", "CTX", "HELD BY", "LOADED ON"], rows)
    if not rows:
        out += "\n(no model in any store yet: `mesh models add PATH` imports one)"
    footer = f"{doc['peers_asked']} peer(s) answered"
    if doc.get("unreachable"):
        footer += f"; {len(doc['unreachable'])} did not: " + "; ".join(doc["unreachable"])
    return out + "\n" + footer


def pull_progress(p: dict) -> str:
    size = max(p["size"], 1)
    rate = p.get("fetched", 0) / p["elapsed_s"] / 1e6 if p["elapsed_s"] else 0.0
    width = 24
    filled = int(width * p["bytes_done"] / size)
    return (f"pulling {p['name']} [{'#' * filled}{'.' * (width - filled)}] {100 * p['bytes_done'] / size:5.1f}% "
            f"{_size(p['bytes_done'])} / {_size(p['size'])}  {rate:.1f} MB/s  from {len(p['by_source'])} peer(s)")
