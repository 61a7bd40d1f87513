"""TVRL on the synthetic data: pretrain every framework (and keep a random-init encoder), linear-probe each on
EchoNet EF regression and on the timed-series progression task, write the table into the probe bundle's docs.

    python scripts/experiments/tvrl_synthetic.py --out runs/tvrl_experiment --write_docs

Every run is a real bundle run: ``tvrl_echo_ssl_pretraining`` (``train.yaml`` + ``small.yaml`` [+
``timed_series.yaml``]) and ``tvrl_echo_linear_probe`` (the same plus ``evaluate.yaml``, through
:func:`medssl_monai.evaluation.probe.run_linear_probe`), so the numbers in the docs are reproducible by this command.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigWorkflow

from medssl_monai.bundle_tools import write_results_block
from medssl_monai.data.synthetic.echonet import make_echonet
from medssl_monai.data.synthetic.timed_series import make_timed_series
from medssl_monai.evaluation.probe import format_mean_std, run_linear_probe
from medssl_monai.methods.tvrl import FRAMEWORKS
from medssl_monai.reproduce.tvrl import encoder_overrides

ROOT = Path(__file__).resolve().parents[2]
SSL, PROBE = ROOT / "bundles" / "tvrl_echo_ssl_pretraining", ROOT / "bundles" / "tvrl_echo_linear_probe"
TASKS = {
    "echo": {"metric": "mae", "better": "lower", "extra": []},
    "series": {"metric": "auroc", "better": "higher", "extra": ["timed_series.yaml"]},
}


def _pretrain(framework: str, task: str, dataset_dir: str, work: Path, epochs: int, cache_dir: str) -> Path:
    root = work / "pretrain" / task / framework
    model = root / "models" / "model.pt"
    if model.is_file():
        return model
    files = [str(SSL / "configs" / f) for f in ["train.yaml", "small.yaml", *TASKS[task]["extra"]]]
    wf = ConfigWorkflow(
        config_file=files,
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=dataset_dir,
        cache_dir=cache_dir,
        framework=framework,
        epochs=epochs,
        batch_size=16,
        mlm_start_epoch=epochs // 2,  # the reference switches the masked-prediction term on half way (100 of 200)
        persistent_workers=True,  # the published tables: persistent workers (the default before 0.3.0)
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return model


def _table(results: dict, fractions: list[float], seeds: list[int]) -> str:
    lines = []
    for task, per_fw in results.items():
        spec = TASKS[task]
        names = ["mae", "rmse", "r2"] if task == "echo" else ["auroc", "ap"]
        title = "EchoNet EF regression (test)" if task == "echo" else "timed-series progression (test)"
        lines += [
            f"**{title}**, mean ± std over {len(seeds)} probe seeds ({spec['metric']}: {spec['better']} is better)",
            "",
        ]
        header = "| encoder | " + " | ".join(f"{m.upper()} @ {f:g}" for f in fractions for m in names) + " |"
        lines += [header, "|" + " --- |" * (1 + len(fractions) * len(names))]
        for fw, per_frac in per_fw.items():
            cells = [format_mean_std(per_frac[str(f)]["summary"][m]) for f in fractions for m in names]
            lines.append(f"| {fw} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(
    out: str = "runs/tvrl_experiment",
    tasks: tuple = ("echo", "series"),
    frameworks: tuple = FRAMEWORKS,
    seeds: tuple = (0, 1, 2, 3, 4),
    fractions: tuple = (1.0, 0.1),
    num_videos: int = 40,
    num_subjects: int = 240,
    pretrain_epochs: int = 30,
    probe_epochs: int = 30,
    probe_batch_size: int = 32,
    probe_patience: int = 5,
    threads: int = 1,
    write_docs: bool = False,
) -> None:
    """Pretrain, probe and tabulate. ``fractions`` are label fractions of the TRAIN split."""
    torch.set_num_threads(threads)  # more threads than free cores make every op spin on a shared CPU
    work = Path(out).resolve()
    cache_dir = str(work / "cache")
    data = {
        "echo": make_echonet(work / "data" / "echonet", num_videos=num_videos, seed=0),
        "series": make_timed_series(work / "data" / "timed_series", num_subjects=num_subjects, seed=0),
    }
    results_file = work / "results.json"
    results: dict = json.loads(results_file.read_text()) if results_file.is_file() else {}
    timings: dict = {}
    for task in tasks:
        results.setdefault(task, {})
        for fw in ("random", *frameworks):
            if fw in results[task]:
                continue
            t0 = time.time()
            ckpt = None if fw == "random" else _pretrain(fw, task, str(data[task]), work, pretrain_epochs, cache_dir)
            t1 = time.time()
            probe = run_linear_probe(
                PROBE,
                work / "probe" / task / fw,
                seeds=list(seeds),
                label_fractions=list(fractions),
                config_files=["train.yaml", "small.yaml", *TASKS[task]["extra"]],
                dataset_dir=str(data[task]),
                cache_dir=cache_dir,
                pretrained_ckpt=str(ckpt) if ckpt else None,
                epochs=probe_epochs,
                batch_size=probe_batch_size,
                patience=probe_patience,
                persistent_workers=True,  # the published tables: persistent workers (the default before 0.3.0)
                **encoder_overrides(fw),
            )
            results[task][fw] = {str(f): v for f, v in probe.items()}
            timings[f"{task}/{fw}"] = {"pretrain_s": round(t1 - t0, 1), "probe_s": round(time.time() - t1, 1)}
            results_file.write_text(json.dumps(results, indent=2))
            print(task, fw, timings[f"{task}/{fw}"], flush=True)
    table = _table(results, list(fractions), list(seeds))
    (work / "table.md").write_text(table)
    print(table)
    if write_docs:
        machine = (
            f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
            f"{threads} torch thread(s) on a 2-core CPU shared with other jobs"
        )
        cmd = (
            f"python scripts/experiments/tvrl_synthetic.py --out {out} --tasks '{json.dumps(list(tasks))}' "
            f"--seeds '{json.dumps(list(seeds))}' --fractions '{json.dumps(list(fractions))}' "
            f"--num_videos {num_videos} --num_subjects {num_subjects} --pretrain_epochs {pretrain_epochs} "
            f"--probe_epochs {probe_epochs} --probe_patience {probe_patience} --threads {threads} --write_docs"
        )
        write_results_block(PROBE / "docs" / "README.md", f"Command: `{cmd}`  \nMachine: {machine}.\n\n{table}\n")


if __name__ == "__main__":
    fire.Fire(main)
