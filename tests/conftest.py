"""Shared fixtures. Test helpers live in the ``support`` package (tests/support), on the
path through pytest's ``pythonpath`` setting in pyproject.toml.

Tiers (each runnable alone, e.g. ``pytest tests/unit``):

- ``unit``: pure functions and classes; no sockets, no model, no sleeping. The quick loop.
- ``sim``: the gossip simulator (many SWIM members over an in-memory lossy network).
- ``inproc``: whole peers (or backends, the real model included) in this process, on loopback.
- ``processes``: real ``mesh-peer`` and engine processes, the CLI, the HTTP API, a browser.
- ``netns``: one peer per Linux network namespace, real mDNS and faults (needs root).
- ``fuzz``: the wire decoders under hypothesis.
"""
