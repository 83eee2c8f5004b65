"""Human-readable output for the CLI: an answer's footer and aligned tables."""

from __future__ import annotations

from mesh.api import Answer


def short_id(peer_id: str) -> str:
    return peer_id[:12]


def answer_footer(a: Answer) -> str:
    return (
        f"-- answered by peer {short_id(a.peer)} with {a.model} · confidence {a.confidence:.2f}"
        f" (least likely token {a.min_token_prob:.2f}) · {a.prompt_tokens} prompt + {a.completion_tokens}"
        f" completion tokens · {a.tokens_per_s:.1f} tok/s · first token {a.time_to_first_token_s * 1000:.0f} ms"
        f" · {a.finish_reason}"
    )


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
        ("model", f"{model.get('name')} ({model.get('quantisation') or '?'}, {model.get('parameters', 0) / 1e6:.0f}M params)"),
        ("context", f"{model.get('context_length')} tokens"),
        ("speed", f"{model.get('tokens_per_s', 0):.1f} tok/s"),
        ("capacity", f"{model.get('parallel')} at once, {model.get('queue_limit')} queued before busy"),
        ("answers", str(doc.get("answers"))),
        ("calls", f"{rpc.get('calls_ok', 0)} ok, {rpc.get('calls_failed', 0)} failed, "
                  f"{rpc.get('calls_cancelled', 0)} cancelled, {rpc.get('in_flight', 0)} in flight"),
    ]
    refused = {k: v for k, v in rpc.get("rejections", {}).items() if v}
    rows.append(("refused frames", ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"))
    return table(rows)
