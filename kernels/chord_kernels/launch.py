"""Launch configuration of the Triton kernels, and the one place its defaults live.

Pure Python (no Triton import), so callers and the benchmark can build configurations on any
machine. The kernels read the fields as:
  rows_per_program   ROWS: rows one program owns (a power of two)
  block_v            BLOCK_V: width of a vocabulary tile (a power of two)
  num_warps          warps per program
  num_stages         Triton's software-pipelining depth for the tile loop (both kernels)
  lane_accumulators  forward only: keep running max / sum / sum*dz per lane, shape [ROWS, BLOCK_V],
                     and reduce across lanes once after the loop, instead of three block-wide
                     reductions per tile
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _next_power_of_two(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


@dataclass(frozen=True)
class LaunchConfig:
    rows_per_program: int
    block_v: int
    num_warps: int
    num_stages: int = 1
    lane_accumulators: bool = False

    def __post_init__(self):
        # tl.arange and Triton's warp layouts need powers of two; a bad value would otherwise
        # surface as a compiler error deep inside the first launch.
        for name in ("rows_per_program", "block_v", "num_warps"):
            if not _is_power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def note(self) -> str:
        """Compact label, e.g. 'rows=1 block_v=4096 warps=8 stages=1 lanes=off' (benchmark CSV)."""
        return (
            f"rows={self.rows_per_program} block_v={self.block_v} warps={self.num_warps} "
            f"stages={self.num_stages} lanes={'on' if self.lane_accumulators else 'off'}"
        )


def default_launch(v_local: int, interpreted: bool) -> LaunchConfig:
    """The configuration used when a caller passes none.

    GPU: one row per program, 4096-wide tiles, 8 warps (16 KiB of fp32 per program in
    registers), no pipelining, per-row accumulators: the fastest of the 16 configurations of
    SWEEP_GRID on an H200 (docs/gpu-acceptance/2026-11-30-h200; the others 6-57% slower).
    Interpreter (TRITON_INTERPRET=1): every program x tile step costs milliseconds of Python, so
    many rows per program and wide tiles keep the number of steps small.
    """
    if interpreted:
        return LaunchConfig(32, min(2048, _next_power_of_two(v_local)), 1)
    return LaunchConfig(1, min(4096, _next_power_of_two(v_local)), 8)


# What `bench_logprobs.py --sweep` times on a GPU (N=16384, V=152064, bf16 is the target shape),
# pruned from rows {1,2,4} x block_v {1024..8192} x warps {4,8,16} x stages {1,2,3} x lanes to 16:
# the default first; per-lane accumulators and load pipelining (the two new knobs) on and off
# around it; wider and narrower tiles with warps scaled to keep 8-32 fp32 values per thread
# per accumulator; a few multi-row programs. The AOT test compiles every entry for sm_90 and
# requires no register spills, so the sweep never times a spilling configuration.
SWEEP_GRID = (
    LaunchConfig(1, 4096, 8),
    LaunchConfig(1, 4096, 8, lane_accumulators=True),
    LaunchConfig(1, 4096, 8, num_stages=2),
    LaunchConfig(1, 4096, 8, num_stages=2, lane_accumulators=True),
    LaunchConfig(1, 4096, 8, num_stages=3, lane_accumulators=True),
    LaunchConfig(1, 4096, 16, num_stages=2, lane_accumulators=True),
    LaunchConfig(1, 2048, 4, lane_accumulators=True),
    LaunchConfig(1, 2048, 4, num_stages=3),
    LaunchConfig(1, 2048, 4, num_stages=3, lane_accumulators=True),
    LaunchConfig(1, 8192, 16),
    LaunchConfig(1, 8192, 16, lane_accumulators=True),
    LaunchConfig(1, 8192, 16, num_stages=2, lane_accumulators=True),
    LaunchConfig(1, 1024, 4, num_stages=3, lane_accumulators=True),
    LaunchConfig(2, 2048, 8, num_stages=2, lane_accumulators=True),
    LaunchConfig(2, 4096, 8),
    LaunchConfig(4, 1024, 4, num_stages=2, lane_accumulators=True),
)
