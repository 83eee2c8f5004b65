"""Run inside a test namespace: ask the local peer and print JSON lines (each routing
step as it happens, then the answer or the error), for tests that act mid-stream."""

import json
import sys

from mesh.client import Client

data_dir, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}


def out(doc):
    print(json.dumps(doc), flush=True)


try:
    answer = Client(data_dir, timeout_s=120).ask(
        prompt, max_tokens=max_tokens, temperature=0, on_step=lambda s: out({"step": s}),
        on_text=lambda t: out({"t": t}), **extra,
    )
    out({"answer": answer.to_dict()})
except Exception as e:  # reported to the test, which asserts on it
    out({"error": f"{type(e).__name__}: {e}"})
