"""One ``torchrun`` worker of a bundle's train workflow, with test hooks (started by ``test_elastic.py``).

Usage: ``torchrun ... _torchrun_runner.py CONFIGS_JSON OVERRIDES_JSON [--kill RANK:ITERATION] [--rank-state]``.

* ``--kill RANK:ITERATION``: in the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0), the worker of global rank
  ``RANK`` SIGKILLs itself when iteration ``ITERATION`` starts: no handler, ``finally`` or atexit runs, as with the
  OOM killer or a lost machine. The restarted workers (``--max-restarts``) run to the end.
* ``--rank-state``: after training, every rank writes its network's ``state_dict`` to
  ``<ckpt_dir>/final.rank<RANK>.pt`` (rank 0's ``model.pt`` alone cannot show that the ranks agree).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", type=json.loads)
    parser.add_argument("overrides", type=json.loads)
    parser.add_argument("--kill", default="", help="RANK:ITERATION")
    parser.add_argument("--rank-state", action="store_true")
    args = parser.parse_args()

    workflow = ConfigWorkflow(config_file=args.configs, workflow_type="train", **args.overrides)
    workflow.initialize()
    rank = int(os.environ.get("RANK", "0"))
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if args.kill and first_attempt:
        kill_rank, kill_at = (int(v) for v in args.kill.split(":"))
        if rank == kill_rank:
            trainer = workflow.parser.get_parsed_content("train#trainer")
            trainer.add_event_handler(
                Events.ITERATION_STARTED(once=kill_at), lambda _: os.kill(os.getpid(), signal.SIGKILL)
            )
    workflow.run()
    if args.rank_state:
        network = workflow.parser.get_parsed_content("network_def")
        ckpt_dir = Path(workflow.parser.get_parsed_content("ckpt_dir"))
        torch.save(network.state_dict(), ckpt_dir / f"final.rank{rank}.pt")
    workflow.finalize()


if __name__ == "__main__":
    main()
