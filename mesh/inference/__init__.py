"""Inference: the Backend interface, the engines behind it, confidence, the model catalog.

Pure: ``backend`` (the ``Backend`` protocol and its data), ``confidence``, ``restarts``
(engine restart policy), ``engine_wire`` (the engine pipe's frames), ``models`` (GGUF
checks, model info), ``slots``, ``coalesce``, ``openai_wire``, ``sse``.

Shell: ``engine_backend`` (``EngineBackend``: llama.cpp in a supervised engine process),
``engine_main`` (that process), ``model_runner`` and ``engine`` (one model, one thread),
``llama`` (``LlamaBackend``, in-process), ``openai_backend`` (any OpenAI-compatible
engine or cloud), ``cpu_variant`` (which CPU kernels), ``capabilities`` (what a peer
gossips about its hardware, models, load and engine), ``known_models`` (where Gemma 3
270M, the stronger model set-up installs, is assembled). Issue 16 groundwork:
``split_plan`` (pure: which layers go to which ggml RPC lender), ``rpc_lender`` (a ggml
RPC server process, loopback only), ``split_load`` (a model loaded over such servers).
See docs/engine.md.
"""

from mesh.inference.backend import (
    Backend,
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    Message,
    TextChunk,
)

__all__ = ["Backend", "Capabilities", "EngineStatus", "FinalStats", "GenerationRequest", "Load", "Message", "TextChunk"]
