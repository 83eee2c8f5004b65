"""When to restart a dead engine process, and how to say why it is not running.

Pure policy: the supervisor (``mesh.inference.engine_backend``) records each exit as an
``EngineExit`` and asks ``after_exit(history, cfg)`` what to do; time never enters
except as the durations the supervisor measured. The rules:

- An engine that reported it cannot load the model (a ``fail`` frame: corrupt file,
  unsupported architecture) is never restarted: the same file fails the same way.
- An engine that dies before it is ready (at load or warm-up) ``give_up_after`` times in
  a row is not restarted either: a crash at warm-up is almost always the build or the
  CPU (the AMX kernels, an instruction the CPU lacks), and restarting loops hot.
- Otherwise it restarts after an exponential back-off (``first_delay_s`` doubling up to
  ``max_delay_s``). An engine that stayed ready for ``stable_after_s`` has earned a
  fresh start: the supervisor clears the history before recording its exit.

The decision carries the words ``mesh status`` and ``mesh doctor`` show.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from mesh.errors import ConfigError

PHASE_WORDS = {
    "spawn": "at start",
    "variant": "while choosing its CPU kernels",
    "loading": "while loading the model",
    "warming": "at warm-up",
    "ready": "while serving",
}


@dataclass(frozen=True)
class RestartConfig:
    first_delay_s: float = 1.0  # back-off after the first exit
    max_delay_s: float = 60.0  # back-off never exceeds this
    give_up_after: int = 3  # consecutive exits before ready that stop the restarts
    stable_after_s: float = 60.0  # ready this long: earlier exits are forgotten

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ConfigError("restart delays must satisfy 0 < first_delay_s <= max_delay_s")
        if self.give_up_after < 1:
            raise ConfigError("give_up_after must be >= 1")

    @classmethod
    def for_tests(cls) -> "RestartConfig":
        return cls(first_delay_s=0.2, max_delay_s=1.0, give_up_after=3, stable_after_s=60.0)


@dataclass(frozen=True)
class EngineExit:
    phase: str  # the last phase the engine reported: spawn, variant, loading, warming, ready
    returncode: int | None  # negative: killed by that signal
    failed: str | None = None  # the engine's own "cannot serve" message (never retried)
    ready_for_s: float = 0.0  # how long it was ready (0: never)

    @property
    def how(self) -> str:
        """``SIGSEGV``, ``exit code 1``, ... in the words people search for."""
        rc = self.returncode
        if rc is None:
            return "lost"
        if rc < 0:
            try:
                return signal.Signals(-rc).name
            except ValueError:
                return f"signal {-rc}"
        return f"exit code {rc}"

    @property
    def where(self) -> str:
        return PHASE_WORDS.get(self.phase, f"in phase {self.phase}")


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_s: float
    reason: str  # one sentence, for status, doctor and the log


def after_exit(history: tuple[EngineExit, ...], cfg: RestartConfig) -> RestartDecision:
    """What to do after ``history[-1]`` (the exits since the last stable run)."""
    if not history:
        raise ValueError("after_exit needs at least one exit")
    last = history[-1]
    if last.failed:
        return RestartDecision(False, 0.0, f"the engine cannot load the model: {last.failed}")
    early = 0
    for e in reversed(history):
        if e.phase == "ready" or e.failed:
            break
        early += 1
    if early >= cfg.give_up_after:
        hows = sorted({e.how for e in history[-early:]})
        return RestartDecision(
            False, 0.0, f"the engine crashed {early} times {last.where}: {', '.join(hows)}; not restarting it"
        )
    delay = min(cfg.max_delay_s, cfg.first_delay_s * 2 ** (len(history) - 1))
    return RestartDecision(True, delay, f"the engine died {last.where} ({last.how}); restarting in {delay:g} s")


def crash_hint(*, variant: str | None, cpu_amx: bool) -> str:
    """What to do about an engine that keeps crashing, from what is known of the build."""
    if cpu_amx and variant in ("sapphirerapids", "built-in"):
        kind = "the AMX variant" if variant == "sapphirerapids" else "a native build, which enables AMX here"
        return (
            f"this CPU has AMX and the engine runs {kind}, whose kernels crash on some Intel CPUs "
            "(llama.cpp issue 20824): unset MESH_ENGINE_CPU_VARIANT, or rerun bin/setup to build the "
            "portable engine"
        )
    return "see the engine's last lines in the peer's log, and run `mesh doctor`"
