"""Which llama.cpp CPU kernels this machine runs, chosen before a model loads.

``bin/setup`` builds llama-cpp-python with ``GGML_NATIVE=OFF``, ``GGML_BACKEND_DL=ON``
and ``GGML_CPU_ALL_VARIANTS=ON``: the CPU backend is not one library compiled for the
build machine, but one shared library per instruction-set level
(``libggml-cpu-haswell.so``, ``-icelake``, ``-zen4``, ``-sapphirerapids`` ...), each
exporting ``ggml_backend_score()`` (0 when this CPU lacks what it needs, higher the more
it uses). llama.cpp would load the best-scoring one; we choose ourselves, for two
reasons:

- The ``sapphirerapids`` variant enables the AMX matrix kernels, which crash
  (SIGSEGV at the first matrix multiply) on some Intel CPUs with AMX (llama.cpp issue
  20824, Ollama issue 17205). It is skipped unless asked for by name.
- The variant in use is then known, so ``mesh info`` and ``mesh doctor`` can say it.

``MESH_ENGINE_CPU_VARIANT=NAME`` forces a variant (``sapphirerapids`` included; for
trying AMX, or for ruling a variant out when diagnosing a crash).

Pure part: ``choose_variant`` (scores in, name out). Shell: ``discover_variants``
(dlopen each library and ask its score) and ``load_cpu_variant`` (register the chosen
one with ggml before ``llama_backend_init`` runs, which then loads nothing else).
A build without variant libraries (an older, native build) reports ``built-in``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ModelError

VARIANT_ENV = "MESH_ENGINE_CPU_VARIANT"

# Variants never chosen by score alone, with the reason shown to users.
UNSAFE_VARIANTS: Mapping[str, str] = {
    "sapphirerapids": "AMX kernels crash on some Intel CPUs (llama.cpp issue 20824)",
}

_VARIANT_FILE = re.compile(r"^libggml-cpu-(.+)\.so$")
BUILT_IN = "built-in"


@dataclass(frozen=True)
class VariantChoice:
    """What ``choose_variant`` decided: the variant to load and why."""

    name: str | None  # None: no usable variant (nothing scores above 0)
    reason: str


def choose_variant(
    scores: Mapping[str, int], *, override: str | None = None, unsafe: Mapping[str, str] = UNSAFE_VARIANTS
) -> VariantChoice:
    """The variant to load. An ``override`` must exist and score above 0 on this CPU;
    otherwise the best score not in ``unsafe`` wins (ties by name, for determinism)."""
    if override:
        if override not in scores:
            raise ModelError(
                f"{VARIANT_ENV}={override!r} names no CPU variant of this build (have: "
                f"{', '.join(sorted(scores)) or 'none'}); unset it or pick one of those"
            )
        if scores[override] <= 0:
            raise ModelError(
                f"{VARIANT_ENV}={override!r}: this CPU lacks instructions that variant needs; unset it"
            )
        return VariantChoice(override, f"forced by {VARIANT_ENV}")
    usable = sorted(((s, n) for n, s in scores.items() if s > 0 and n not in unsafe), key=lambda t: (-t[0], t[1]))
    if not usable:
        return VariantChoice(None, "no CPU variant of this build runs on this CPU")
    best = usable[0][1]
    skipped = [n for n, s in scores.items() if n in unsafe and s > scores[best]]
    why = f"best of {len(usable)} usable"
    if skipped:
        why += "; skipped " + ", ".join(f"{n} ({unsafe[n]})" for n in sorted(skipped))
    return VariantChoice(best, why)


def lib_dir() -> Path:
    """llama-cpp-python's library folder (found without importing ``llama_cpp``)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("llama-cpp-python is not installed; run bin/setup")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def variant_files(directory: Path) -> dict[str, Path]:
    """``{variant name: library path}`` for every CPU variant library in ``directory``."""
    out: dict[str, Path] = {}
    if directory.is_dir():
        for p in sorted(directory.iterdir()):
            m = _VARIANT_FILE.match(p.name)
            if m:
                out[m.group(1)] = p
    return out


def discover_variants(directory: Path) -> dict[str, int]:
    """Each variant's score on this CPU (0: it cannot run here). Loads each library
    only to call its score function; nothing is registered with ggml."""
    scores: dict[str, int] = {}
    for name, path in variant_files(directory).items():
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_LAZY)
            fn = lib.ggml_backend_score
        except (OSError, AttributeError):
            scores[name] = 0
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = []
        scores[name] = int(fn())
    return scores


@dataclass(frozen=True)
class LoadedVariant:
    """The CPU kernels an engine process runs; shown by ``mesh info`` and ``mesh doctor``."""

    name: str  # a variant name, or "built-in" (a build without variant libraries)
    reason: str
    available: tuple[str, ...]  # every variant this build ships, usable here or not

    def to_wire(self) -> dict:
        return {"variant": self.name, "reason": self.reason, "available": list(self.available)}


def load_cpu_variant(*, override: str | None = None) -> LoadedVariant:
    """Register the chosen CPU variant with ggml. Call once per process, before the
    first ``llama_cpp`` model load (``llama_backend_init`` then finds a backend
    registered and loads no other). Raises ``ModelError`` when nothing usable exists."""
    directory = lib_dir()
    files = variant_files(directory)
    if not files:
        return LoadedVariant(BUILT_IN, "this build has its CPU kernels linked in (no variant libraries)", ())
    import llama_cpp  # noqa: F401  (loads libggml-base.so, which the variants link to, and libggml.so)

    scores = discover_variants(directory)
    override = override if override is not None else (os.environ.get(VARIANT_ENV) or None)
    choice = choose_variant(scores, override=override)
    if choice.name is None:
        raise ModelError(f"{choice.reason} (scores: {scores}); rebuild llama-cpp-python with bin/setup")
    ggml = ctypes.CDLL(str(_ggml_lib(directory)), mode=os.RTLD_GLOBAL)
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    if not ggml.ggml_backend_load(str(files[choice.name]).encode()):
        raise ModelError(f"ggml could not load CPU variant {choice.name} from {files[choice.name]}")
    return LoadedVariant(choice.name, choice.reason, tuple(sorted(files)))


_loaded: LoadedVariant | None = None


def ensure_cpu_variant() -> LoadedVariant:
    """``load_cpu_variant`` once per process; later calls return the first result."""
    global _loaded
    if _loaded is None:
        _loaded = load_cpu_variant()
    return _loaded


def backend_env(variant: LoadedVariant) -> dict[str, str]:
    """Environment for another llama.cpp process of this install (``python -m
    llama_cpp.server``, say) so that it loads the same CPU variant: llama.cpp finds no
    variant library on its own search path (it looks beside the Python executable)."""
    if variant.name == BUILT_IN:
        return {}
    return {"GGML_BACKEND_PATH": str(variant_files(lib_dir())[variant.name])}


def _ggml_lib(directory: Path) -> Path:
    """The ggml library ``libllama`` itself loaded. A wheel stores ``libggml.so`` and
    ``libggml.so.0`` as two copies of one file, and loading the other copy would give a
    second, separate backend registry that llama.cpp never sees."""
    for name in ("libggml.so.0", "libggml.0.dylib", "libggml.dylib", "libggml.so", "ggml.dll"):
        if (directory / name).exists():
            return directory / name
    raise ModelError(f"no libggml library in {directory}; reinstall llama-cpp-python with bin/setup")


def default_threads() -> int:
    """Physical cores (llama.cpp gains nothing from hyper-threads), else logical CPUs."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (Linux ``/proc/cpuinfo``;
    elsewhere empty). Lower case, e.g. ``avx2``, ``avx512f``, ``amx_int8``, ``asimd``."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


_SHOWN_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "sve2", "i8mm")


def cpu_summary() -> dict:
    """Model name, architecture and the instruction-set flags that matter to llama.cpp."""
    flags = cpu_flags()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "flags": [f for f in _SHOWN_FLAGS if f in flags],
        "amx": any(f.startswith("amx") for f in flags),
    }


def describe() -> str:
    """One paragraph on this machine's CPU and the engine variant it gets (``bin/setup`` prints it)."""
    cpu = cpu_summary()
    try:
        v = ensure_cpu_variant()
        engine = f"CPU variant {v.name} ({v.reason}); {len(v.available)} variants built"
    except ModelError as e:
        engine = f"no usable CPU variant: {e}"
    return f"==> engine: {cpu['model']} [{cpu['arch']}; {' '.join(cpu['flags']) or 'no extensions seen'}]; {engine}"


if __name__ == "__main__":
    print(describe())
