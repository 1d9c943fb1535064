"""The tune's cost model: a layout's predicted speed-up over the best one-GPU configuration, learned as it goes.

Each parallel dimension keeps a fraction of the ideal gain per doubling (n GPUs give n x eff^log2(n)), CFG
parallel a fixed factor. Priors are the guide's; PCIe lowers them (no NVLink: every exchange crosses the host).
Each measured layout with one dimension sets that dimension's efficiency, so 2-GPU scaling predicts 4 and 8;
a dimension the server said it ignored (SP without ``_sp_plan``) gains nothing, without another launch.
The dimensions that split the DiT's work (Ulysses, Ring, TP) pay for the same interconnect and the same model
shape: one not measured yet is predicted from its prior scaled as the measured ones compared with theirs
(Ulysses and Ring at 85-90% of their priors predict TP at ~88% of its own, not at its prior).
A layout measured already is predicted from that measurement, not from its dimensions: the same layout held
another way (layerwise offload, HSDP) from it, times what the two ways were seen to cost against each other on
another layout (unseen: the same, with the prior's slack; never faster than the layout measured resident, since
offloading or sharding weights that fit only adds work). One pair needs no comparison on PCIe: HSDP against
layerwise offload over an SP group. Each rank then copies 1/sp of every layer from the host, where HSDP gathers the
other (sp-1)/sp from its peers over the same PCIe links: HSDP moves at least as much, so it is predicted no faster
(with NVLink its gathers are an order of magnitude faster than host copies, and it keeps the slack).
"""

from __future__ import annotations

import math

PRIOR = {"usp": 0.85, "ring": 0.75, "tensor_parallel_size": 0.7}
PCIE_FACTOR = 0.8
CFG_PRIOR = 1.85
SP_DIMENSIONS = ("usp", "ring")
LAYOUT = ("cfg_parallel_size", "usp", "ring", "tensor_parallel_size")  # the dimensions a layout multiplies
SPLIT = ("usp", "ring", "tensor_parallel_size")  # split the DiT's work: each exchange crosses the interconnect
HOLD = ("enable_layerwise_offload", "enable_cpu_offload", "use_hsdp")  # ways of holding the weights of one layout


class CostModel:
    def __init__(self, uses_cfg: bool, nvlink: bool | None) -> None:
        factor = PCIE_FACTOR if nvlink is False else 1.0
        self.eff = {k: v * factor for k, v in PRIOR.items()}
        self.prior = dict(self.eff)
        self.cfg_gain = CFG_PRIOR if uses_cfg else 1.0
        self.nvlink = nvlink
        self.inert: set[str] = set()
        self.learned: set[str] = set()
        self.refused: list[set[tuple[str, int]]] = []  # layouts the engine refused: (dimension, degree) pairs
        self.seen: dict[frozenset, dict[str, float]] = {}  # layout -> way of holding its weights -> gain measured

    def gain(self, config: dict) -> float:
        """Predicted speed-up of ``config``'s layout over the same settings on one GPU (0: the engine refused a
        layout it contains, so it refuses this one too)."""
        if any(r <= set(layout_of(config).items()) for r in self.refused):
            return 0.0
        seen = self._seen(config)
        if seen is not None:
            return seen[0]
        g = 1.0
        for k, v in layout_of(config).items():
            if k in self.inert:
                continue
            g *= self.cfg_gain if k == "cfg_parallel_size" else v * self.efficiency(k) ** math.log2(v)
        return g

    def efficiency(self, k: str) -> float:
        """Kept per doubling: measured, or the prior scaled as the measured splitting dimensions compare with
        theirs (geometric mean of their ratios)."""
        if k in self.learned or k not in SPLIT:
            return self.eff[k]
        ratios = [self.eff[d] / self.prior[d] for d in SPLIT if d in self.learned and d not in self.inert]
        if not ratios:
            return self.eff[k]
        return min(1.0, self.eff[k] * math.prod(ratios) ** (1 / len(ratios)))

    def optimistic(self, config: dict, slack: float) -> float:
        """The predicted gain, with ``slack`` where a dimension is still on its prior (never measured), or where the
        layout was measured only held another way and the two ways were never compared."""
        seen = self._seen(config)
        unmeasured = (not seen[1]) if seen is not None else bool(set(layout_of(config)) - self.learned - self.inert)
        return self.gain(config) * (slack if unmeasured and not self._moves_no_less(config) else 1.0)

    def _moves_no_less(self, config: dict) -> bool:
        """HSDP on PCIe, this layout measured with layerwise offload over an SP group: its gathers cross the same
        links as the offload's copies and move at least as much per rank (see the module's docstring)."""
        layout = layout_of(config)
        sp = layout.get("usp", 1) * layout.get("ring", 1)
        seen = self.seen.get(frozenset(layout.items()), {})
        return self.nvlink is False and sp > 1 and hold_of(config) == "use_hsdp" and "enable_layerwise_offload" in seen

    def _seen(self, config: dict) -> tuple[float, bool] | None:
        """From the measurements of this very layout: (gain, whether backed by evidence for its way of holding
        the weights); None when the layout was never measured."""
        seen = self.seen.get(frozenset(layout_of(config).items()))
        if not seen:
            return None
        hold = hold_of(config)
        if hold in seen:
            return seen[hold], True
        if "" in seen:  # offloading or sharding weights that fit resident only adds work: at most as fast
            return seen[""] * min(1.0, self.relative(hold, "") or 1.0), True
        guesses = [(g * r, True) if (r := self.relative(hold, other)) is not None else (g, False)
                   for other, g in seen.items()]
        return max(guesses)

    def relative(self, hold: str, other: str) -> float | None:
        """How ``hold`` compared with ``other`` on the layouts measured both ways (geometric mean; None: never)."""
        ratios = [s[hold] / s[other] for s in self.seen.values() if hold in s and other in s and s[other] > 0]
        return math.prod(ratios) ** (1 / len(ratios)) if ratios else None

    def learn(self, config: dict, observed: float) -> None:
        """``observed``: measured speed-up over the one-GPU reference. Sets the one dimension it varies, or the one
        dimension of a combined layout not measured yet (the others' learned gains divided out: Ulysses seen only
        beside CFG parallel still tells what Ulysses gives, so a wider layout leaning on it is predicted from
        evidence, not from its prior). The layout itself keeps its best figure per way of holding the weights."""
        if layout_of(config):
            seen, hold = self.seen.setdefault(frozenset(layout_of(config).items()), {}), hold_of(config)
            seen[hold] = max(observed, seen.get(hold, 0.0))
        layout = {k: v for k, v in layout_of(config).items() if k not in self.inert}
        if len(layout) > 1:
            unknown = [k for k in layout if k not in self.learned]
            if len(unknown) != 1:
                return
            observed /= self.gain({k: v for k, v in layout.items() if k != unknown[0]})
            layout = {unknown[0]: layout[unknown[0]]}
        if len(layout) != 1:
            return
        (k, v), = layout.items()
        # the best observation of a dimension holds: variants with offload or HSDP add costs of their own, and
        # one noisy figure must not hide a dimension that scales
        if k == "cfg_parallel_size":
            self.cfg_gain = max(observed, self.cfg_gain) if k in self.learned else observed
        else:
            eff = min(1.0, max(0.05, (max(observed, 1e-6) / v) ** (1 / math.log2(v))))
            self.eff[k] = max(eff, self.eff[k]) if k in self.learned else eff
        self.learned.add(k)

    def refuse(self, config: dict) -> None:
        """The engine refused this layout (a feature the capability report could not see it reject): every
        layout with the same dimensions at the same degrees would be refused too."""
        if layout_of(config):
            self.refused.append(set(layout_of(config).items()))

    def mark_inert(self, dimensions: tuple[str, ...]) -> None:
        self.inert.update(dimensions)


def layout_of(config: dict) -> dict[str, int]:
    return {k: int(config[k]) for k in LAYOUT if int(config.get(k, 1) or 1) > 1}


def hold_of(config: dict) -> str:
    """How a layout holds its weights: resident (""), or its offload and sharding flags."""
    return "+".join(k for k in HOLD if config.get(k))


def gpus_of(config: dict) -> int:
    return len(config.get("gpus") or [0])
