"""Decode any supported clip source to ``T x H x W x C`` ``uint8`` frames.

Sources: video files (``.avi``, ``.mp4``, ...), frame folders (``00000.jpg``, ``00001.jpg``, ...), still images
(one frame: GBCU's ``img,label`` lists name single images), arrays (``.npy``, ``T x H x W`` or ``T x H x W x C``
``uint8``) and medical image sequences: NIfTI (``.nii``/``.nii.gz``, stored ``W x H x T`` as CAMUS does, or
``W x H x 1 x T``; read with nibabel) and ITK MetaImage (``.mhd`` + ``.raw`` or ``.mha``, the original CAMUS release;
read with ITK).

Arrays and sequences that are not 8-bit are converted where the intent is clear and refused with the file and the
problem otherwise (:func:`to_uint8`): float intensities in ``[0, 1]`` are scaled to ``0..255``, whole numbers in
``0..255`` kept. A 3D sequence is read with time last (``W x H x T``) unless its shape says otherwise
(:func:`sequence_layout`): square frames stored time first (``T x H x W``, a numpy video saved as it is) are read
time first.
"""

from __future__ import annotations

import logging
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
    "sequence_layout",
    "to_uint8",
]

logger = logging.getLogger(__name__)

# a frame side below this is not an image one would segment or embed: used to tell time from space
_MIN_FRAME_SIDE = 16

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


def to_uint8(data: np.ndarray, path: str | Path) -> np.ndarray:
    """Intensities as ``uint8`` where the intent is clear, else a :class:`DataError` naming the file and the problem.

    ``uint8`` is kept; integers (and whole-number floats, e.g. a label sequence saved as float) in ``0..255`` are
    cast; floats in ``[0, 1]`` with fractional values (a normalised image) are scaled by 255 and rounded; floats in
    ``[0, 255]`` are rounded. NaN / infinite values, negative values and values above 255 are errors.
    """
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.dtype == bool or data.size == 0:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise DataError(path, f"{data.dtype} intensities cannot be read as 8-bit frames")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise DataError(path, f"NaN or infinite intensities ({int((~np.isfinite(data)).sum())} values)")
    lo, hi = data.min(), data.max()
    if lo < 0 or hi > 255:
        raise DataError(
            path, f"intensities {lo:g}..{hi:g} outside 0..255 (and not 0..1): expected 8-bit frames; rescale them"
        )
    if np.issubdtype(data.dtype, np.floating):
        whole = bool(np.all(data == np.round(data)))
        if hi <= 1.0 and not whole:  # a normalised [0, 1] image
            return np.rint(data * 255.0).astype(np.uint8)
        return np.rint(data).astype(np.uint8)
    return data.astype(np.uint8)


def _decode_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"cannot be read as a .npy array ({e})") from e
    if arr.ndim == 3:
        return to_uint8(arr, path)[..., None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return to_uint8(arr, path)
    raise DataError(path, f"expected T x H x W or T x H x W x C (C in 1, 3), got shape {arr.shape}")


def sequence_layout(shape: tuple[int, ...]) -> str:
    """``"time_last"`` or ``"time_first"``: how a 3D sequence of stored shape ``shape`` (fastest axis first, as
    nibabel reports it) holds its frames.

    ``W x H x T`` (time last, the NIfTI / CAMUS convention) unless the shape says otherwise: square frames with time
    first (``T x H x W`` with ``H == W != T``, a numpy video saved as it is), or time last would give frames narrower
    than 16 pixels while time first would not. Anything else (all sides different and plausible) is read time last.
    """
    s0, s1, s2 = shape
    if s0 == s1:  # square frames first: time last
        return "time_last"
    if s1 == s2:  # square frames last: time first
        return "time_first"
    if min(s0, s1) < _MIN_FRAME_SIDE <= min(s1, s2):
        return "time_first"
    return "time_last"


def _decode_sequence(path: Path) -> np.ndarray:
    stored = read_medical_image(path).T  # as stored, fastest axis first: W x H x T (CAMUS), W x H x 1 x T, ...
    shape = tuple(int(s) for s in stored.shape)
    sides = [s for s in shape if s > 1]
    if len(sides) == 2:  # one frame: W x H (x 1)
        frames = stored.reshape(sides).T[None]
    elif len(sides) == 3:
        stored = stored.reshape(sides)
        if sequence_layout(tuple(sides)) == "time_first":
            logger.info(f"{path}: stored {' x '.join(map(str, sides))} with time first (T x H x W): read so")
            frames = stored  # T x H x W already
        else:
            frames = stored.T  # W x H x T -> T x H x W
    else:
        raise DataError(
            path,
            f"expected a 2D sequence W x H x T, got shape {' x '.join(map(str, shape))} "
            f"({len(sides)} axes longer than 1)",
        )
    return np.ascontiguousarray(to_uint8(frames, path)[..., None])  # T x H x W x 1


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
