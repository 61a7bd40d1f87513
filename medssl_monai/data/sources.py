"""Decode any supported clip source to ``T x H x W x C`` ``uint8`` frames.

Sources: video files (``.avi``, ``.mp4``, ...), frame folders (``00000.jpg``, ``00001.jpg``, ...), still images
(one frame: GBCU's ``img,label`` lists name single images), arrays (``.npy``, ``T x H x W`` or ``T x H x W x C``
``uint8``) and medical image sequences: NIfTI (``.nii``/``.nii.gz``, stored ``W x H x T`` as CAMUS does, or
``W x H x 1 x T``; read with nibabel) and ITK MetaImage (``.mhd`` + ``.raw`` or ``.mha``, the original CAMUS release;
read with ITK).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medssl_monai.data.video import VIDEO_EXTENSIONS, read_video
from medssl_monai.errors import DataError, VideoReadError
from medssl_monai.opencv import import_cv2

__all__ = [
    "decode_frames",
    "frame_files",
    "header_shape",
    "IMAGE_EXTENSIONS",
    "is_medical_image",
    "is_metaimage",
    "is_nifti",
    "METAIMAGE_EXTENSIONS",
    "read_medical_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
METAIMAGE_EXTENSIONS = (".mhd", ".mha")


def is_nifti(path: str | Path) -> bool:
    """``.nii`` or ``.nii.gz``."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def is_metaimage(path: str | Path) -> bool:
    """``.mhd`` (header beside a ``.raw``) or ``.mha`` (one file): ITK MetaImage."""
    return Path(path).suffix.lower() in METAIMAGE_EXTENSIONS


def is_medical_image(path: str | Path) -> bool:
    """NIfTI or MetaImage."""
    return is_nifti(path) or is_metaimage(path)


def header_shape(path: str | Path) -> tuple[int, ...]:
    """Image size from the header only, fastest axis first (``W x H x T`` for a CAMUS sequence), both formats.

    Raises:
        DataError: the file cannot be read as NIfTI / MetaImage.
    """
    path = Path(path)
    if is_metaimage(path):
        import itk

        try:
            io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
            if io is None:
                raise RuntimeError("no ITK reader for this file")
            io.SetFileName(str(path))
            io.ReadImageInformation()
            return tuple(int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions()))
        except RuntimeError as e:  # ITK wraps every C++ exception as RuntimeError
            raise DataError(path, f"cannot be read as MetaImage ({e})") from e
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).shape)  # nib.load reads the header only
    except Exception as e:  # nibabel raises several types for corrupt files
        raise DataError(path, f"cannot be read as NIfTI ({e})") from e


def read_medical_image(path: str | Path) -> np.ndarray:
    """Pixels of a NIfTI or MetaImage file, slowest axis first: a CAMUS sequence ``T x H x W``, a mask ``H x W``.

    ITK returns numpy arrays slowest axis first (``z, y, x``) and nibabel fastest first (``x, y, z``), so the NIfTI
    array is transposed: the same image in either format gives the same array. Orientation matrices are not
    applied (CAMUS stores the pixel grid as acquired in both releases).

    Raises:
        DataError: the file cannot be read.
    """
    path = Path(path)
    if is_metaimage(path):
        import itk

        try:
            return np.asarray(itk.array_from_image(itk.imread(str(path))))
        except RuntimeError as e:  # ITK wraps every C++ exception as RuntimeError
            raise DataError(path, f"cannot be read as MetaImage ({e})") from e
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises several types for corrupt files
        raise DataError(path, f"cannot be read as NIfTI ({e})") from e
    return data.T


def _frame_key(p: Path):
    digits = re.findall(r"\d+", p.stem)
    return (int(digits[-1]) if digits else -1, p.name)


def frame_files(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in frame order (numeric order of the last number in the name)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=_frame_key)


def _read_image(path: Path) -> np.ndarray:
    cv2 = import_cv2()

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(path, "cannot be decoded as an image (corrupt or unsupported)")
    if img.dtype != np.uint8:
        raise DataError(path, f"expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return img[..., None]
    if img.shape[-1] == 4:
        img = img[..., :3]
    return img[..., ::-1]


def _decode_folder(folder: Path) -> np.ndarray:
    files = frame_files(folder)
    if not files:
        raise DataError(folder, f"frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    frames = [_read_image(f) for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DataError(folder, f"frames differ in shape: {sorted(shapes)}")
    return np.stack(frames)


def _decode_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"cannot be read as a .npy array ({e})") from e
    if arr.dtype != np.uint8:
        raise DataError(path, f"expected uint8 frames, got {arr.dtype}")
    if arr.ndim == 3:
        return np.asarray(arr)[..., None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return np.asarray(arr)
    raise DataError(path, f"expected T x H x W or T x H x W x C (C in 1, 3), got shape {arr.shape}")


def _decode_sequence(path: Path) -> np.ndarray:
    data = read_medical_image(path)  # T x H x W (or T x 1 x H x W: NIfTI W x H x 1 x T)
    if data.ndim == 4 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 3:
        raise DataError(path, f"expected a W x H x T sequence, got shape {data.shape[::-1]} (W first)")
    if data.dtype != np.uint8:
        if data.min() < 0 or data.max() > 255:
            raise DataError(path, f"intensities outside 0..255 ({data.min()}..{data.max()}); expected 8-bit frames")
        data = data.astype(np.uint8)
    return np.ascontiguousarray(data[..., None])  # T x H x W x 1


def decode_frames(path: str | Path, min_frames: int = 1) -> np.ndarray:
    """Decode a clip source to ``T x H x W x C`` ``uint8``.

    Raises:
        DataError: (or :class:`VideoReadError`) naming the source and the problem.
    """
    path = Path(path)
    if path.is_dir():
        frames = _decode_folder(path)
    elif not path.exists():
        raise DataError(path, "file not found")
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        return read_video(path, min_frames=min_frames)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        frames = _read_image(path)[None]
    elif path.suffix.lower() == ".npy":
        frames = _decode_npy(path)
    elif is_medical_image(path):
        frames = _decode_sequence(path)
    else:
        expected = f"a video {VIDEO_EXTENSIONS}, a frame folder, an image {IMAGE_EXTENSIONS}, .npy, NIfTI or .mhd"
        raise DataError(path, f"unsupported clip source (expected {expected})")
    if frames.shape[0] < min_frames:
        raise VideoReadError(path, f"too few frames: {frames.shape[0]}, at least {min_frames} needed")
    return frames
