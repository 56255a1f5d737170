"""What every benchmark section hands back: measured rows, plus profiles of the stages that missed a target."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Row:
    """One measured number and the conditions it was measured under (the report adds device and versions)."""

    section: str                     # model | extraction | decode | search | ann | metrics | latency | growth
    measurement: str                 # what was timed, in words
    value: float
    unit: str
    ratio: Optional[float] = None    # value relative to ``ratio_to`` (throughput ratio, speed-up, overhead factor)
    ratio_to: str = ""
    batch_size: Optional[int] = None
    precision: str = ""
    image_size: Optional[int] = None
    n: Optional[int] = None          # images, queries or gallery items the number is over
    note: str = ""
    key: str = ""                    # stable id the targets look rows up by, e.g. "model/ratio/resnet50"


@dataclass
class SectionResult:
    rows: list = field(default_factory=list)
    profiles: dict = field(default_factory=dict)   # target id -> [profile texts], only where it was missed
    notes: list = field(default_factory=list)      # sentences for the section's intro

    def find(self, key: str) -> Optional[Row]:
        return next((r for r in self.rows if r.key == key), None)
