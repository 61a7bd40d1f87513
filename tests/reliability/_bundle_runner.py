"""Run one bundle's train workflow in this process (used as a subprocess by the reliability tests).

Usage: ``python _bundle_runner.py CONFIGS_JSON OVERRIDES_JSON [KILL_AT_ITERATION]`` (``CONFIGS_JSON``: the list of
config files, merged in order). With ``KILL_AT_ITERATION`` the process SIGKILLs itself when that iteration starts
(after the previous iteration's checkpoint was written): no handler, ``finally`` or atexit runs, as with the OOM
killer or a cluster pre-emption.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from ignite.engine import Events
from monai.bundle import ConfigWorkflow


def main() -> None:
    configs, overrides = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", **overrides)
    workflow.initialize()
    if kill_at:
        trainer = workflow.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(
            Events.ITERATION_STARTED(once=kill_at), lambda _: os.kill(os.getpid(), signal.SIGKILL)
        )
    workflow.run()
    workflow.finalize()


if __name__ == "__main__":
    main()
