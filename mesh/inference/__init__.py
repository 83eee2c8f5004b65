"""Inference: the Backend interface, the llama.cpp backend, confidence, the model catalog."""

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
