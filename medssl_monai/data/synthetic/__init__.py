"""Synthetic datasets in the exact public formats, carrying the signal each method learns from.

``make_echonet`` (EchoNet-Dynamic videos and tracings), ``make_camus`` (CAMUS NIfTI), ``make_frame_folders`` (UCL /
GBUSV frame folders), ``make_timed_series`` (irregularly timed series, TVRL) and ``make_all``. See
``docs/synthetic_data.md``.
"""

from __future__ import annotations

from medssl_monai.data.synthetic._common import MARKER_NAME
from medssl_monai.data.synthetic.arrays import make_arrays, synthetic_arrays
from medssl_monai.data.synthetic.camus import make_camus, synthesize_camus_patient
from medssl_monai.data.synthetic.echonet import (
    EchoVideo,
    echonet_pixel_spacing,
    make_echonet,
    save_montage,
    synthesize_echo_video,
)
from medssl_monai.data.synthetic.heart import HeartParams, HeartRenderer, heart_labels, lv_tracing, sample_heart
from medssl_monai.data.synthetic.suite import SIZES, make_all
from medssl_monai.data.synthetic.timed_series import make_timed_series
from medssl_monai.data.synthetic.ultrasound import make_frame_folders, synthesize_sweep

__all__ = [
    "make_arrays",
    "synthetic_arrays",
    "MARKER_NAME",
    "SIZES",
    "EchoVideo",
    "HeartParams",
    "HeartRenderer",
    "echonet_pixel_spacing",
    "heart_labels",
    "lv_tracing",
    "make_all",
    "make_camus",
    "make_echonet",
    "make_frame_folders",
    "make_timed_series",
    "sample_heart",
    "save_montage",
    "synthesize_camus_patient",
    "synthesize_echo_video",
    "synthesize_sweep",
]
