"""Disjoint GPU sets for trials that run side by side on one host.

Pure functions over ``detect_gpus``' report: which GPUs a trial may use (not held by a running omnitune
server, no foreign memory in use, enough free memory) and which set of them (all pairs on NVLink when the host
has it, else the closest PCIe topology; taking GPUs whose NVLink partners are gone already, so that later
multi-GPU trials still find linked sets). No GPU is ever in two sets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omnitune.tools.gpus import GpuReport

# NVML's common-ancestor levels, nearest first; a pair on NVLink costs nothing.
_DISTANCE = {"internal": 1, "single_switch": 1, "multiple_switch": 2, "host_bridge": 3, "numa_node": 4, "system": 5}
_UNKNOWN_DISTANCE = 3
# Memory some other process holds on a GPU before it counts as busy: an idle driver holds a few hundred MiB.
FOREIGN_BUSY_MIB = 2048
_ENUMERATE_LIMIT = 20000  # combinations tried exhaustively; above, sets are grown greedily


@dataclass(frozen=True)
class Ask:
    """What one trial needs: a number of GPUs and, if estimated, the memory it needs on each."""

    gpus: int
    memory_mib: int | None = None


@dataclass(frozen=True)
class Topology:
    """Which pairs share NVLink and how far apart the others are (from ``GpuReport.links``)."""

    nvlink: frozenset[frozenset[int]]
    distance: dict[frozenset[int], int]

    @classmethod
    def of(cls, report: GpuReport) -> Topology:
        nvlink, distance = set(), {}
        for link in report.links:
            pair = frozenset((link.a, link.b))
            if link.nvlink:
                nvlink.add(pair)
            distance[pair] = 0 if link.nvlink else _DISTANCE.get(link.topology or "", _UNKNOWN_DISTANCE)
        return cls(frozenset(nvlink), distance)

    def linked(self, a: int, b: int) -> bool:
        return frozenset((a, b)) in self.nvlink

    def all_nvlink(self, gpus: Sequence[int]) -> bool:
        return all(self.linked(a, b) for a, b in itertools.combinations(gpus, 2))

    def cost(self, gpus: Sequence[int]) -> tuple[int, int]:
        """(pairs not on NVLink, summed distance of all pairs): lower is better."""
        pairs = [frozenset(p) for p in itertools.combinations(gpus, 2)]
        return (sum(p not in self.nvlink for p in pairs),
                sum(self.distance.get(p, _UNKNOWN_DISTANCE) for p in pairs))


def usable_gpus(report: GpuReport, held: Iterable[int] = (), memory_mib: int | None = None,
                foreign_busy_mib: int = FOREIGN_BUSY_MIB) -> tuple[list[int], dict[int, str]]:
    """GPUs a trial may be given, and why each other GPU may not.

    ``held``: GPUs of omnitune's own live servers (never shared). Memory some other process holds makes a GPU
    busy unless the trial's estimate (``memory_mib``) says it still fits in what is free.
    """
    held = set(held)
    free, why = [], {}
    for g in report.gpus:
        if g.index in held:
            why[g.index] = "held by a running omnitune server"
        elif g.mig_mode == "enabled":
            why[g.index] = "MIG mode is on (a trial needs whole GPUs)"
        elif memory_mib is not None and g.memory_free_mib is not None and g.memory_free_mib < memory_mib:
            why[g.index] = f"{g.memory_free_mib} MiB free, the trial needs {memory_mib} MiB"
        elif memory_mib is None and (g.memory_used_mib or 0) > max(foreign_busy_mib, 0.02 * (g.memory_total_mib or 0)):
            why[g.index] = f"{g.memory_used_mib} MiB already in use by another process"
        else:
            free.append(g.index)
    return free, why


def choose(size: int, free: Sequence[int], topology: Topology) -> list[int] | None:
    """The best ``size`` GPUs among ``free``: NVLink between all of them if possible, nearest otherwise, and
    among equals the set that cuts the fewest NVLinks to the GPUs left free (a pair stays whole for later)."""
    free = sorted(set(free))
    if size < 1 or size > len(free):
        return None

    def score(gpus: Sequence[int]) -> tuple[int, int, int, tuple[int, ...]]:
        rest = [g for g in free if g not in gpus]
        cut = sum(topology.linked(a, b) for a in gpus for b in rest)
        return (*topology.cost(gpus), cut, tuple(gpus))

    if math.comb(len(free), size) <= _ENUMERATE_LIMIT:
        return list(min(itertools.combinations(free, size), key=score))
    best: list[int] | None = None  # many GPUs: grow a set from each seed, nearest GPU first
    for seed in free:
        chosen = [seed]
        while len(chosen) < size:
            chosen.append(min((g for g in free if g not in chosen), key=lambda g: (topology.cost([*chosen, g]), g)))
        if best is None or score(sorted(chosen)) < score(best):
            best = sorted(chosen)
    return best


def place(asks: Sequence[Ask], free: Sequence[int], topology: Topology,
          memory_free: dict[int, int] | None = None) -> list[list[int] | None]:
    """A disjoint GPU set for each ask that fits (None for the others), largest asks placed first.

    ``memory_free``: free MiB per GPU, checked against each ask's ``memory_mib``.
    """
    left = sorted(set(free))
    out: list[list[int] | None] = [None] * len(asks)
    for i in sorted(range(len(asks)), key=lambda i: -asks[i].gpus):
        ask = asks[i]
        pool = [g for g in left if ask.memory_mib is None or memory_free is None
                or memory_free.get(g, 0) >= ask.memory_mib]
        chosen = choose(ask.gpus, pool, topology)
        if chosen:
            out[i] = chosen
            left = [g for g in left if g not in chosen]
    return out


def fits_now(asks: Sequence[Ask], free: Sequence[int], topology: Topology, limit: int | None = None,
             memory_free: dict[int, int] | None = None) -> dict[int, list[int]]:
    """Which pending asks (by position, in order of priority) start now, and where: first fit in order, each
    later ask backfilling what is left; at most ``limit`` of them."""
    taken: list[int] = []
    total = 0
    for i, ask in enumerate(asks):
        if limit is not None and len(taken) >= limit:
            break
        if total + ask.gpus <= len(free):
            trial = place([asks[j] for j in [*taken, i]], free, topology, memory_free)
            if all(trial):
                taken.append(i)
                total += ask.gpus
    placed = place([asks[i] for i in taken], free, topology, memory_free)
    return {i: gpus for i, gpus in zip(taken, placed, strict=True) if gpus}
