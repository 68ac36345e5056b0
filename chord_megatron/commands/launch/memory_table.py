"""The memory estimate as `chord launch plan` prints it: each term with its GiB and its assumption,
then what each phase of a step holds at once, the peak and the margin left on the GPU."""

from __future__ import annotations

from typing import List

from .memory import GIB, MemoryEstimate


def format_memory(m: MemoryEstimate, *, cpu: bool = False, sglang_colocated: bool = False) -> List[str]:
    """Lines of the plan's memory section. `cpu`: a CPU job, the GPU numbers are not checked."""
    peak = m.peak
    checked = "not checked: CPU run" if cpu else f"of {m.gpu / GIB:.1f} GiB, margin {m.margin / GIB:.1f} GiB"
    who = "trainer rank 0 + SGLang server 0" if sglang_colocated else "trainer rank 0"
    out = [
        f"memory on GPU 0, {who} (an ESTIMATE, see chord_megatron.commands.launch.memory.estimate_memory): "
        f"peak {peak.bytes / GIB:.1f} GiB ({peak.name}) {checked}",
        f"  {m.params_total / 1e9:.3g}B params, {m.params_per_gpu / 1e9:.3g}B per GPU",
        f"  {'term':<17}{'GiB':>6}  assumption",
    ]
    out += [f"  {t.name:<17}{t.bytes / GIB:>6.1f}  {t.assumption}" for t in m.terms]
    out.append(f"  {'phase':<17}{'GiB':>6}  on the GPU at once")
    out += [f"  {p.name:<17}{p.bytes / GIB:>6.1f}  {p.resident}" for p in m.phases]
    return out
