"""A user's own files for inference: folders, globs and lists; ids from relative paths; NIfTI layouts, float
intensities and one-frame videos handled where the intent is clear, refused with the file and the problem otherwise."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import Dataset

from medssl_monai.data.inputs import find_inputs, inference_datalist, input_ids, with_frame_counts
from medssl_monai.data.robust import SkipBadSamples
from medssl_monai.data.sources import decode_frames, sequence_layout, to_uint8
from medssl_monai.data.video import write_video
from medssl_monai.errors import DataError
from medssl_monai.transforms.io import LoadClipd

RNG = np.random.default_rng(0)


def _video(path: Path, frames: int = 6) -> Path:
    return write_video(path, RNG.integers(0, 256, (frames, 16, 16), np.uint8))


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_folder_is_searched_recursively_and_ids_keep_the_relative_path(tmp_path: Path):
    _touch(tmp_path, "a/1.avi", "b/1.avi", "b/c/2.MP4", "x.nii.gz", "notes.txt", ".partial.avi", "d/.hidden/3.avi")
    items = inference_datalist(tmp_path)
    assert [i["video_id"] for i in items] == ["a/1", "b/1", "b/c/2", "x"]  # a/1.avi and b/1.avi stay apart
    assert items[0]["image"] == str(tmp_path / "a" / "1.avi")


def test_glob_and_list_inputs(tmp_path: Path):
    _touch(tmp_path, "a/1.avi", "a/2.mp4", "b/1.avi", "b/c/3.avi")
    assert [i["video_id"] for i in inference_datalist(str(tmp_path / "**" / "*.avi"))] == ["a/1", "b/1", "b/c/3"]
    listed = inference_datalist([tmp_path / "a" / "1.avi", tmp_path / "b", tmp_path / "a" / "1.avi"])
    assert [i["video_id"] for i in listed] == ["a/1", "b/1", "b/c/3"]  # a file named twice is read once
    assert inference_datalist(tmp_path / "a" / "2.mp4")[0]["video_id"] == "2"


def test_ids_that_would_collide_keep_their_extension():
    assert input_ids(["/d/1.avi", "/d/1.mp4", "/d/2.nii.gz"]) == ["1.avi", "1.mp4", "2"]


def test_nothing_to_read_is_an_error_naming_the_input(tmp_path: Path):
    _touch(tmp_path, "notes.txt")
    with pytest.raises(FileNotFoundError, match="no video or NIfTI file in .*searched recursively"):
        inference_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no video or NIfTI file matches '.*\*.avi'"):
        inference_datalist(str(tmp_path / "*.avi"))
    # a listed file is taken as it is: a missing one is reported (and skipped) when it is loaded
    assert find_inputs([tmp_path / "gone.avi"]) == [tmp_path / "gone.avi"]


def test_frame_folders_are_one_input_each(tmp_path: Path):
    from medssl_monai.opencv import import_cv2

    cv2 = import_cv2()
    for k in range(3):
        (tmp_path / "Video_7").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "Video_7" / f"{k:05d}.png"), RNG.integers(0, 256, (8, 8, 3), np.uint8))
    _video(tmp_path / "clips" / "a.avi", frames=5)
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    items = with_frame_counts(inference_datalist(tmp_path, frame_folders=True), cache_dir=tmp_path / "cache")
    assert [(i["video_id"], i["num_frames"]) for i in items] == [("Video_7", 3), ("broken", 1), ("clips/a", 5)]


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def test_nifti_time_last_and_time_first(tmp_path: Path):
    video = RNG.integers(0, 256, (10, 24, 24), np.uint8)  # T x H x W, square frames
    stored_last = _nifti(tmp_path / "last.nii.gz", np.ascontiguousarray(video.transpose(2, 1, 0)))  # W x H x T
    stored_first = _nifti(tmp_path / "first.nii.gz", video)  # a numpy video saved as it is: time first
    np.testing.assert_array_equal(decode_frames(stored_last)[..., 0], video)
    np.testing.assert_array_equal(decode_frames(stored_first)[..., 0], video)


def test_sequence_layout_rules():
    assert sequence_layout((112, 112, 10)) == "time_last"  # square frames first
    assert sequence_layout((10, 112, 112)) == "time_first"  # square frames last
    assert sequence_layout((549, 778, 20)) == "time_last"  # CAMUS: the NIfTI convention
    assert sequence_layout((10, 60, 80)) == "time_first"  # time last would give 10-pixel-wide frames


def test_float_intensities(tmp_path: Path):
    video = RNG.random((6, 20, 20)).astype(np.float32)  # normalised to [0, 1]
    frames = decode_frames(_nifti(tmp_path / "unit.nii.gz", video.transpose(2, 1, 0)))[..., 0]
    np.testing.assert_array_equal(frames, np.rint(video * 255).astype(np.uint8))
    labels = np.array([[0.0, 1.0], [1.0, 0.0]])  # whole numbers (a label map saved as float) stay as they are
    assert to_uint8(labels, "labels.nii").tolist() == [[0, 1], [1, 0]]
    with pytest.raises(DataError, match=r"hu.nii.gz: intensities -1000..400 outside 0..255"):
        decode_frames(_nifti(tmp_path / "hu.nii.gz", np.linspace(-1000, 400, 6 * 400).reshape(20, 20, 6)))
    with pytest.raises(DataError, match="nan.npy: NaN or infinite intensities"):
        np.save(tmp_path / "nan.npy", np.full((3, 8, 8), np.nan, np.float32))
        decode_frames(tmp_path / "nan.npy")


def test_one_frame_video_is_an_error_for_that_file_and_a_skipped_input(tmp_path: Path):
    still = _video(tmp_path / "still.avi", frames=1)
    good = _video(tmp_path / "good.avi", frames=6)
    transform = LoadClipd(keys="image", num_frames=4, mode="start", min_frames=2, cache=False, pad_mode="repeat")
    dataset = SkipBadSamples(Dataset(inference_datalist([still, good]), transform), replace=False)
    marker = dataset[0]  # a list keeps its order
    assert marker.file == str(still) and "too few frames: 1 decoded, at least 2 needed" in marker.reason
    assert dataset[1]["image"].shape == (3, 4, 16, 16)
