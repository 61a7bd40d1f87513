"""Synthetic CAMUS: apical four-chamber half sequences (ED to ES) with dense labels, in the CAMUS NIfTI layout.

CAMUS (Leclerc et al., IEEE TMI 2019) stores per patient ``patientXXXX_4CH_half_sequence.nii.gz`` (``W x H x T``),
its ``_gt`` labels (0 background, 1 LV endocardium, 2 LV myocardium, 3 left atrium), the ED and ES frames as 2D
``W x H`` images with their ``_gt``, and ``Info_4CH.cfg`` (1-based ED/ES frame numbers). The frames come from the
same heart model and renderer as the synthetic EchoNet videos (:mod:`medssl_monai.data.synthetic.heart`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.synthetic._common import item_rng, parallel_map, write_dataset
from medssl_monai.data.synthetic.echonet import ECHONET_DEPTH_CM, NUM_CHORDS, systole_fraction
from medssl_monai.data.synthetic.heart import HeartRenderer, contraction_curve, lv_tracing, sample_heart
from medssl_monai.data.tracings import disc_volume

__all__ = ["make_camus", "camus_pixel_spacing_mm", "synthesize_camus_patient"]

_ABNORMALITY_P = {"normal": 0.6, "reduced_ef": 0.25, "akinetic_segment": 0.15}


def camus_pixel_spacing_mm(height: int) -> float:
    """Isotropic pixel spacing in mm: the image height spans the same depth as the synthetic EchoNet frames."""
    return 10.0 * ECHONET_DEPTH_CM / float(height)


def synthesize_camus_patient(seed: int, patient: int, image_size: tuple[int, int] = (160, 128)) -> dict:
    """Render patient ``patient`` (1-based) of :func:`make_camus`: frames and labels ``T x H x W`` plus metadata."""
    rng = item_rng(seed, "camus", patient)
    names = list(_ABNORMALITY_P)
    abnormality = names[int(rng.choice(len(names), p=list(_ABNORMALITY_P.values())))]
    params = sample_heart(rng, tuple(image_size), abnormality)
    heart_rate = float(rng.uniform(55.0, 95.0))
    fps = int(rng.integers(25, 51))
    ts = systole_fraction(heart_rate)
    period = 60.0 * fps / heart_rate
    contraction = contraction_curve(np.arange(int(round(ts * period)) + 2) / period, ts)
    es = int(np.argmax(contraction))  # the half sequence ends at the discrete end-systole
    contraction = contraction[: es + 1]
    renderer = HeartRenderer(params, rng)
    rendered = [renderer.render(float(c)) for c in contraction]
    spacing_cm = camus_pixel_spacing_mm(image_size[0]) / 10.0
    edv = disc_volume(*lv_tracing(params, float(contraction[0]), NUM_CHORDS), spacing_cm)
    esv = disc_volume(*lv_tracing(params, float(contraction[-1]), NUM_CHORDS), spacing_cm)
    quality = "Good" if params.gain >= 1.0 else ("Medium" if params.gain >= 0.88 else "Poor")
    return {
        "frames": np.stack([r[0] for r in rendered]),
        "labels": np.stack([r[1] for r in rendered]),
        "abnormality": abnormality,
        "heart_rate_bpm": heart_rate,
        "frame_rate": fps,
        "edv": edv,
        "esv": esv,
        "ef": 100.0 * (edv - esv) / edv,
        "sex": "FM"[int(rng.integers(2))],
        "age": int(rng.integers(20, 91)),
        "quality": quality,
    }


def _save_nifti(path: Path, array_thw_or_hw: np.ndarray, spacing_mm: float) -> None:
    import nibabel as nib

    # CAMUS stores images column-major as W x H (x T): transpose the row-major H x W (T first) arrays.
    data = np.ascontiguousarray(np.transpose(array_thw_or_hw, (2, 1, 0) if array_thw_or_hw.ndim == 3 else (1, 0)))
    affine = np.diag([spacing_mm, spacing_mm, 1.0, 1.0])
    img = nib.Nifti1Image(data.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.to_filename(str(path))


def _write_patient(k: int, out: Path, seed: int, image_size: tuple[int, int], spacing: float) -> dict:
    """Render and write patient ``k`` of :func:`make_camus`; its ``SyntheticTruth.csv`` row."""
    height, width = image_size
    pat = synthesize_camus_patient(seed, k, image_size)
    name = f"patient{k:04d}"
    folder = out / name
    folder.mkdir(parents=True)
    frames, labels = pat["frames"], pat["labels"]
    n = len(frames)
    _save_nifti(folder / f"{name}_4CH_half_sequence.nii.gz", frames, spacing)
    _save_nifti(folder / f"{name}_4CH_half_sequence_gt.nii.gz", labels, spacing)
    for phase, idx in (("ED", 0), ("ES", n - 1)):
        _save_nifti(folder / f"{name}_4CH_{phase}.nii.gz", frames[idx], spacing)
        _save_nifti(folder / f"{name}_4CH_{phase}_gt.nii.gz", labels[idx], spacing)
    cfg = {
        "ED": 1,
        "ES": n,
        "NbFrame": n,
        "Sex": pat["sex"],
        "Age": pat["age"],
        "ImageQuality": pat["quality"],
        "EF": int(round(pat["ef"])),
        "FrameRate": pat["frame_rate"],
        "LVedv": round(pat["edv"], 2),
        "LVesv": round(pat["esv"], 2),
        "LVef": round(pat["ef"], 2),
    }
    (folder / "Info_4CH.cfg").write_text("".join(f"{key}: {val}\n" for key, val in cfg.items()))
    return {
        "Patient": name,
        "Abnormal": int(pat["abnormality"] != "normal"),
        "Abnormality": pat["abnormality"],
        "HeartRateBPM": pat["heart_rate_bpm"],
        "EDV": pat["edv"],
        "ESV": pat["esv"],
        "EF": pat["ef"],
        "PixelSpacingMm": spacing,
    }


def make_camus(
    root: str | Path,
    num_patients: int = 10,
    seed: int = 0,
    image_size: tuple[int, int] = (160, 128),
    num_workers: int = 1,
) -> Path:
    """Write a synthetic CAMUS (four-chamber view) dataset to ``root``; skipped if already there.

    Args:
        root: output folder (``root/patient0001/...``).
        num_patients: number of patients.
        seed: random seed; the same seed writes identical arrays.
        num_workers: processes rendering the patients (the files are the same for any number).
        image_size: ``(H, W)`` of the frames (stored ``W x H`` as CAMUS).

    Files per patient: ``patientXXXX_4CH_half_sequence.nii.gz`` and ``_gt``, ``patientXXXX_4CH_{ED,ES}.nii.gz``
    and ``_gt``, ``Info_4CH.cfg``; plus ``root/SyntheticTruth.csv`` (abnormality class, heart rate, volumes).
    """
    if num_patients < 1:
        raise ValueError(f"num_patients must be >= 1, got {num_patients}")
    height, width = (int(v) for v in image_size)
    if min(height, width) < 32:
        raise ValueError(f"image_size must be at least 32 x 32, got {image_size}")
    spacing = camus_pixel_spacing_mm(height)

    def writer(out: Path) -> None:
        item = partial(_write_patient, out=out, seed=seed, image_size=(height, width), spacing=spacing)
        truth = parallel_map(item, range(1, num_patients + 1), num_patients, "camus", num_workers)
        pd.DataFrame(truth).to_csv(out / "SyntheticTruth.csv", index=False)

    return write_dataset(
        root, "camus", {"num_patients": num_patients, "seed": seed, "image_size": [height, width]}, writer
    )
