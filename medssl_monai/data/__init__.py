"""Readers that turn a dataset on disk into a MONAI datalist, video IO, the decoded-clip cache and the
synthetic generator (``medssl_monai.data.synthetic``)."""

from __future__ import annotations

from medssl_monai.data.arrays import load_array_datalist
from medssl_monai.data.cache import ClipCache, default_cache_dir
from medssl_monai.data.camus import load_camus_datalist
from medssl_monai.data.datalist import cycle_to_length, subsample_by_key
from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.frame_folders import load_frame_folder_datalist
from medssl_monai.data.report import ReadReport
from medssl_monai.data.sources import decode_frames
from medssl_monai.data.timed_series import load_timed_series_datalist
from medssl_monai.data.video import read_video, write_video

__all__ = [
    "ClipCache",
    "ReadReport",
    "cycle_to_length",
    "decode_frames",
    "default_cache_dir",
    "load_array_datalist",
    "load_camus_datalist",
    "load_echonet_datalist",
    "load_frame_folder_datalist",
    "load_timed_series_datalist",
    "read_video",
    "subsample_by_key",
    "write_video",
]
