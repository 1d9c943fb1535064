"""Orchestration: locate vllm-omni, analyse pipelines (cached), assemble reports and the support table."""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field

from omnitune.tools.capabilities.analysis import analyse
from omnitune.tools.capabilities.cache import AnalysisCache
from omnitune.tools.capabilities.classes import model_classes
from omnitune.tools.capabilities.facts import VersionFacts, read_facts
from omnitune.tools.capabilities.flags import serve_flags
from omnitune.tools.capabilities.locate import Located, locate
from omnitune.tools.capabilities.registry import Registry, read_registry
from omnitune.tools.capabilities.report import Constraint, MethodSupport
from omnitune.tools.capabilities.source import SourceIndex
from omnitune.tools.settings import Settings

M = TypeVar("M", bound=BaseModel)


class VersionInfo(BaseModel):
    registered: list[str]
    cache_backends: list[str]
    cache_backends_evidence: str | None = None
    quantization_methods: list[str]
    quantization_evidence: str | None = None
    omni_flags: dict[str, str]
    all_flags: list[str]
    flags_how: str
    ulysses_heads_evidence: str | None = None


class PipelineAnalysis(BaseModel):
    pipeline_class: str
    pipeline_impl: str
    pipeline_module: str
    dit_class: str | None = None
    dit_module: str | None = None
    dit_classes: list[str] = Field(default_factory=list)
    dit_attrs: list[str] = Field(default_factory=list)
    methods: dict[str, MethodSupport] = Field(default_factory=dict)
    constraints: list[Constraint] = Field(default_factory=list)
    uses_cfg: bool | None = None
    error: str | None = None


@contextmanager
def _no_gc():
    """Parsing builds millions of AST objects; the cyclic GC rescanning them costs more than the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Analyzer:
    """All analyses of one located vllm-omni; parsing state is shared, results are cached."""

    def __init__(self, located: Located, cache_dir: Path | None, seed: Analyzer | None = None) -> None:
        """``seed``: an analyzer of the same located package in this process (another workspace's): its results are
        reused while the files they read are unchanged, instead of parsing the package again."""
        self.located = located
        self.cache = AnalysisCache(located.root, located.version, cache_dir, seed.cache.snapshot() if seed else None)
        self._lock = threading.RLock()
        self._index: SourceIndex | None = None
        self._facts: VersionFacts | None = None
        self._registry: Registry | None = None
        self._objects: dict[str, BaseModel] = {}   # validated views of cache entries
        if self.cache.seeded and seed is not None:
            with seed._lock:
                self._objects.update(seed._objects)

    def _cached(self, key: str, model: type[M]) -> M | None:
        obj = self._objects.get(key)
        if isinstance(obj, model):
            return obj
        raw = self.cache.get(key)
        if raw is None:
            return None
        found = model.model_validate(raw)
        self._objects[key] = found
        return found

    def memo(self, key: str, kind: type[M], value: M | None = None) -> M | None:
        """Derived objects (the assembled table) kept until the sources change."""
        if value is not None:
            self._objects["memo:" + key] = value
        found = self._objects.get("memo:" + key)
        return found if isinstance(found, kind) else None

    def _state(self) -> tuple[SourceIndex, VersionFacts, Registry]:
        if self._index is None or self._facts is None or self._registry is None:
            self._index = SourceIndex(self.located.root)
            self._registry = read_registry(self._index)
            self._facts = read_facts(self._index)
        return self._index, self._facts, self._registry

    def _reset_if_changed(self) -> None:
        before = self.cache.data
        self.cache.check()
        if self.cache.data is not before:
            self._index = self._facts = self._registry = None
            self._objects.clear()

    def version_info(self, check: bool = True) -> VersionInfo:
        with self._lock:
            if check:
                self._reset_if_changed()
            hit = self._cached("version", VersionInfo)
            if hit is not None:
                return hit
            with _no_gc():
                return self._version_info()

    def _version_info(self) -> VersionInfo:
        index, facts, registry = self._state()
        every, own, how = serve_flags(index)
        info = VersionInfo(registered=sorted(registry.entries), cache_backends=facts.cache_backends,
                           cache_backends_evidence=facts.cache_backends_evidence,
                           quantization_methods=facts.quantization_methods,
                           quantization_evidence=facts.quantization_evidence, omni_flags=own,
                           all_flags=sorted(every), flags_how=how,
                           ulysses_heads_evidence=facts.ulysses_heads_evidence)
        self.cache.put("version", info.model_dump(mode="json"), index.files)
        self._objects["version"] = info
        return info

    def pipeline(self, arch: str, check: bool = True) -> PipelineAnalysis:
        """The analysis of one registered `_class_name` (CapabilityError if not registered)."""
        with self._lock:
            if check:
                self._reset_if_changed()
            hit = self._cached("pipeline:" + arch, PipelineAnalysis)
            if hit is not None:
                return hit
            with _no_gc():
                index, facts, registry = self._state()
                entry = registry.get(arch)
                result = self._analyse(index, facts, registry, entry)
            self.cache.put("pipeline:" + arch, result.model_dump(mode="json"), index.files)
            self._objects["pipeline:" + arch] = result
            return result

    def _analyse(self, index, facts, registry, entry) -> PipelineAnalysis:
        mod = index.module(entry.module)
        cls = index.resolve_class(mod, entry.cls) if mod else None
        if cls is None:
            return PipelineAnalysis(pipeline_class=entry.arch, pipeline_impl=entry.cls,
                                    pipeline_module=entry.module,
                                    error=f"{entry.cls} was not found in {entry.module} "
                                          f"(registered at {entry.evidence})")
        mc = model_classes(index, cls)
        result = analyse(index, facts, mc, entry.arch, registry.no_cache)
        dit = mc.dit
        return PipelineAnalysis(
            pipeline_class=entry.arch, pipeline_impl=cls.name, pipeline_module=cls.at(),
            dit_class=dit.name if dit else None, dit_module=dit.at() if dit else None,
            dit_classes=list(dict.fromkeys(c.name for c in mc.dits.values())), dit_attrs=list(mc.dits),
            methods=result.methods, constraints=result.constraints, uses_cfg=result.uses_cfg)

    def table(self) -> list[PipelineAnalysis]:
        with self._lock, _no_gc():
            info = self.version_info()
            rows = [self.pipeline(arch, check=False) for arch in info.registered]
            # Every result is cached now: drop the parsed trees while the GC is still paused, so that it
            # never has to scan them (they are re-parsed only if a file changes or a new key is asked for).
            self._index = self._facts = self._registry = None
        self.cache.flush()
        return rows

    def flush(self) -> None:
        self.cache.flush()


_ANALYZERS: dict[tuple[str, str, str], Analyzer] = {}
_GUARD = threading.Lock()


def analyzer(settings: Settings) -> Analyzer:
    """The (process-wide) analyzer of the vllm-omni these settings locate."""
    located = locate(settings)
    cache_dir = settings.workspace / "cache"
    key = (str(located.root), located.version, str(cache_dir))
    with _GUARD:
        found = _ANALYZERS.get(key)
        if found is None or found.located != located:
            seed = next((a for k, a in reversed(_ANALYZERS.items()) if k[:2] == key[:2] and a.located == located),
                        None)
            found = _ANALYZERS[key] = Analyzer(located, cache_dir, seed)
        return found


