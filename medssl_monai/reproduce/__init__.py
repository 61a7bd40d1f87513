"""Reproduce a paper's main table: its experiment as stages of plain bundle runs (:mod:`.plan`), one module per
paper (:mod:`.unilvseg`, :mod:`.tvrl`, :mod:`.discovr`, :mod:`.ucl`) and the table writer (:mod:`.table`).

``python -m medssl_monai reproduce PAPER [--dataset_dir DIR] [--preset tiny|cpu|recipe] [--out DIR]
[--nproc_per_node N] [--dry_run]``.
"""

from medssl_monai.reproduce.api import PAPERS, build_plan, reproduce
from medssl_monai.reproduce.plan import Estimate, Plan, PlanError, Stage, StageFailed

__all__ = ["PAPERS", "build_plan", "reproduce", "Plan", "Stage", "Estimate", "PlanError", "StageFailed"]
