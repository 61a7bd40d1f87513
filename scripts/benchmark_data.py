"""Benchmark: 32-frame 112x112 clips per second from EchoNet-format AVIs, decoded per sample vs cached.

Methods, all sampling the same ``(video, start)`` plan:

- ``reference``: decode the whole video with OpenCV per sample, then slice (what the EchoNet / SimLVSeg
  ``Dataset.__getitem__`` does);
- ``pyav``: the same with PyAV, to choose the decoder by measurement;
- ``cache``: :class:`~medssl_monai.data.cache.ClipCache` ``frames(p)[s:s+32]`` copied to a contiguous array
  (the one-off build is timed separately);
- ``cache_dataloader`` / ``reference_dataloader``: both through a ``torch.utils.data.DataLoader`` with
  ``--workers`` workers (worker start-up included, as in every epoch).

``--mode cache-lookup`` times :class:`~medssl_monai.data.cache.ClipCache` lookups alone in caches of
``--entries`` entries (tiny arrays, a stub decoder: only the lookup, the write and the stale-entry removal count):
a hit, a miss (a new source), an edited source (its stale entry removed), and a miss with the previous stale-entry
removal (a ``glob`` of the folder per miss), whose cost grows with the number of entries.

Usage::

    python scripts/benchmark_data.py --num-videos 16 --out runs/benchmark_data.json
    python scripts/benchmark_data.py --root /data/EchoNet-Dynamic --out bench.json   # real data
    python scripts/benchmark_data.py --mode cache-lookup --entries 100,1000,10000

Prints a markdown table and writes the numbers (and the machine) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import medssl_monai.data.cache as cache_module
from medssl_monai.data.cache import ClipCache
from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.video import read_video, to_clip

__all__ = ["main", "run_benchmark"]


def cpu_model() -> str:
    """The CPU model name (``lscpu``'s "Model name") from ``/proc/cpuinfo``, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_video_pyav(path: str | Path) -> np.ndarray:
    """Decode a whole video with PyAV to ``T x H x W x 3`` ``uint8`` RGB."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def _plan(num_frames: list[int], n: int, clip_len: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    vids = rng.integers(0, len(num_frames), n)
    return [(int(v), int(rng.integers(0, max(num_frames[v] - clip_len, 0) + 1))) for v in vids]


def _clip(frames: np.ndarray, start: int, clip_len: int) -> np.ndarray:
    return np.ascontiguousarray(to_clip(frames[start : start + clip_len]))  # C x T x H x W uint8


class _ClipDataset:
    """A map-style dataset over the sample plan (picklable for DataLoader workers)."""

    def __init__(self, paths: list[str], plan: list[tuple[int, int]], clip_len: int, cache_dir: str | None) -> None:
        self.paths, self.plan, self.clip_len, self.cache_dir = paths, plan, clip_len, cache_dir
        self._cache = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        import torch

        v, s = self.plan[i]
        if self.cache_dir is None:
            frames = read_video(self.paths[v])
        else:
            if self._cache is None:
                self._cache = ClipCache(self.cache_dir)
            frames = self._cache.frames(self.paths[v])
        return torch.from_numpy(_clip(frames, s, self.clip_len))


def _time_loop(fn, plan) -> float:
    t0 = time.perf_counter()
    for v, s in plan:
        fn(v, s)
    return time.perf_counter() - t0


def _time_interleaved(fns: dict, plan) -> dict[str, float]:
    totals = dict.fromkeys(fns, 0.0)
    for v, s in plan:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(v, s)
            totals[name] += time.perf_counter() - t0
    return totals


def _time_loader(dataset: _ClipDataset, workers: int, batch_size: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def run_benchmark(
    root: Path | None,
    num_videos: int,
    min_frames: int,
    max_frames: int,
    clip_len: int,
    samples: int,
    decode_samples: int,
    workers: int,
    seed: int,
) -> dict:
    """Generate (unless ``root`` is given) and time every method; returns the result dict."""
    result: dict = {
        "machine": {"cpu": cpu_model(), "cpus": _cpus(), "python": platform.python_version()},
        "clip": f"{clip_len} frames",
    }
    tmp = Path(tempfile.mkdtemp(prefix="medssl_bench_"))
    try:
        if root is None:
            try:
                from medssl_monai.data.synthetic import make_echonet
            except ImportError as e:
                sys.exit(f"cannot import medssl_monai.data.synthetic.make_echonet ({e}); pass --root <EchoNet folder>")
            root = tmp / "echonet"
            t0 = time.perf_counter()
            make_echonet(root, num_videos=num_videos, seed=seed, min_frames=min_frames, max_frames=max_frames)
            gen = time.perf_counter() - t0
            result["generation"] = {"videos": num_videos, "seconds": gen, "videos_per_s": num_videos / gen}
        items = load_echonet_datalist(root)[:num_videos]
        if not items:
            sys.exit(f"{root}: no usable EchoNet videos")
        paths = [i["image"] for i in items]
        num_frames = [read_video(p).shape[0] for p in paths]  # the true counts (and a warm page cache)
        hw = read_video(paths[0]).shape[1:3]
        result["videos"] = {"count": len(paths), "frames_mean": float(np.mean(num_frames)), "size": list(hw)}
        plan = _plan(num_frames, samples, clip_len, seed)
        slow = plan[:decode_samples]

        cache_dir = tmp / "cache"
        cache = ClipCache(cache_dir)
        t0 = time.perf_counter()
        cache.build(paths, num_workers=0, progress=False)
        build = time.perf_counter() - t0
        result["cache_build"] = {"seconds": build, "videos_per_s": len(paths) / build}

        # the decoders must agree before their speeds mean anything
        v, s = plan[0]
        ref = _clip(read_video(paths[v]), s, clip_len)
        assert np.array_equal(_clip(cache.frames(paths[v]), s, clip_len), ref), "cache differs from decoding"
        pyav_diff = int(np.abs(_clip(read_video_pyav(paths[v]), s, clip_len).astype(int) - ref).max())
        result["pyav_max_abs_diff_vs_opencv"] = pyav_diff

        rows = []

        def add(name: str, n: int, seconds: float) -> None:
            rows.append({"method": name, "samples": n, "seconds": seconds, "clips_per_s": n / seconds})

        # the two decoders alternate sample by sample so load from other processes hits both alike
        decode = _time_interleaved(
            {
                "reference (OpenCV whole-video decode per sample)": lambda v, s: _clip(
                    read_video(paths[v]), s, clip_len
                ),
                "PyAV whole-video decode per sample": lambda v, s: _clip(read_video_pyav(paths[v]), s, clip_len),
            },
            slow,
        )
        for name, seconds in decode.items():
            add(name, len(slow), seconds)
        add(
            "cache: frames(p)[s:s+T] copied",
            len(plan),
            _time_loop(lambda v, s: _clip(cache.frames(paths[v]), s, clip_len), plan),
        )
        add(
            f"reference, DataLoader {workers} workers",
            len(slow),
            _time_loader(_ClipDataset(paths, slow, clip_len, None), workers, 8),
        )
        add(
            f"cache, DataLoader {workers} workers",
            len(plan),
            _time_loader(_ClipDataset(paths, plan, clip_len, str(cache_dir)), workers, 8),
        )
        base = rows[0]["clips_per_s"]
        for r in rows:
            r["speedup_vs_reference"] = r["clips_per_s"] / base
        result["methods"] = rows
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _GlobPerMissCache(ClipCache):
    """The previous stale-entry removal: every miss lists the folder (``glob``), O(entries) per miss."""

    def _drop_stale(self, keep: Path) -> None:
        for old in self.cache_dir.glob(f"{keep.name.split('-', 1)[0]}-*.npy"):
            if old != keep:
                old.unlink(missing_ok=True)


def _tiny_frames(path: Path) -> np.ndarray:
    return np.zeros((1, 2, 2, 1), dtype=np.uint8)  # a stub decoder: the lookup is what is timed


def _fill(folder: Path, entries: int, cache: ClipCache) -> list[Path]:
    """``entries`` source files, each with its entry written directly (no miss path: building is not timed)."""
    sources = []
    folder.mkdir(parents=True)
    cache.cache_dir.mkdir(parents=True)
    frames = _tiny_frames(folder)
    for i in range(entries):
        src = folder / f"s{i:06d}.bin"
        src.write_bytes(i.to_bytes(4, "little"))
        np.save(cache.entry_path(src), frames, allow_pickle=False)
        sources.append(src)
    return sources


def _per_call_us(fn, args: list) -> float:
    t0 = time.perf_counter()
    for a in args:
        fn(a)
    return (time.perf_counter() - t0) / len(args) * 1e6


def run_cache_lookup(entry_counts: list[int], lookups: int, seed: int) -> dict:
    """Per-lookup microseconds of hits and misses in caches of each size in ``entry_counts``."""
    result: dict = {"machine": {"cpu": cpu_model(), "cpus": _cpus(), "python": platform.python_version()}}
    rng = np.random.default_rng(seed)
    rows = []
    for n in entry_counts:
        tmp = Path(tempfile.mkdtemp(prefix="medssl_lookup_"))
        try:
            cache = ClipCache(tmp / "cache", decoder=_tiny_frames)
            sources = _fill(tmp / "src", n, cache)
            listings = cache_module._INDEX.listings
            new = [tmp / "src" / f"new{i}.bin" for i in range(2 * lookups + 1)]
            for i, p in enumerate(new):
                p.write_bytes(b"new" + i.to_bytes(4, "little"))
            t0 = time.perf_counter()
            cache.frames(new[0])  # the process's first miss in this folder: one listing
            first = (time.perf_counter() - t0) * 1e6
            hits = [sources[i] for i in rng.integers(0, n, lookups)]
            hit = _per_call_us(cache.frames, hits)
            miss = _per_call_us(cache.frames, new[1 : lookups + 1])
            edited = [sources[i] for i in rng.choice(n, size=min(lookups, n), replace=False)]
            for p in edited:  # a newer mtime: the entry is stale, its source misses
                st = p.stat()
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            stale = _per_call_us(cache.frames, edited)
            assert len(list(cache.cache_dir.glob("*.npy"))) == n + lookups + 1, "a stale entry was left behind"
            listed = cache_module._INDEX.listings - listings
            glob_cache = _GlobPerMissCache(tmp / "cache", decoder=_tiny_frames)
            glob_miss = _per_call_us(glob_cache.frames, new[lookups + 1 :])
            rows.append(
                {
                    "entries": n,
                    "hit_us": hit,
                    "miss_us": miss,
                    "edited_us": stale,
                    "first_miss_us": first,
                    "listings": listed,
                    "glob_miss_us": glob_miss,
                }
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result["lookups"] = lookups
    result["rows"] = rows
    return result


def markdown_lookup(result: dict) -> str:
    """The cache-lookup result as a markdown table plus the machine."""
    lines = [
        "| entries | hit (us) | miss (us) | edited source (us) | first miss: one listing (us) "
        "| miss, glob per miss (previous, us) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['entries']:,} | {r['hit_us']:.0f} | {r['miss_us']:.0f} | {r['edited_us']:.0f} "
            f"| {r['first_miss_us']:.0f} | {r['glob_miss_us']:.0f} |"
        )
    m = result["machine"]
    lines.append("")
    lines.append(
        f"{result['lookups']} lookups of each kind per size, mean per call; a miss includes writing the (tiny) entry "
        f"with its fsync. Folder listings by this process: {[r['listings'] for r in result['rows']]} (one per cache)."
    )
    lines.append(f"Machine: {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}.")
    return "\n".join(lines)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def markdown(result: dict) -> str:
    """The result as a markdown table plus one line each for generation, the cache build and the machine."""
    lines = ["| method | samples | clips/s | speed-up vs reference |", "| --- | ---: | ---: | ---: |"]
    for r in result["methods"]:
        lines.append(f"| {r['method']} | {r['samples']} | {r['clips_per_s']:.1f} | {r['speedup_vs_reference']:.1f}x |")
    v = result["videos"]
    lines.append("")
    lines.append(
        f"{v['count']} videos, {v['size'][0]}x{v['size'][1]}, mean {v['frames_mean']:.0f} frames; clips of "
        f"{result['clip']}. Cache build (one-off): {result['cache_build']['seconds']:.2f} s "
        f"({result['cache_build']['videos_per_s']:.1f} videos/s)."
    )
    if "generation" in result:
        g = result["generation"]
        lines.append(
            f"Synthetic EchoNet generation: {g['videos']} videos in {g['seconds']:.1f} s "
            f"({g['videos_per_s']:.2f} videos/s)."
        )
    lines.append(f"PyAV vs OpenCV decoded pixels: max abs difference {result['pyav_max_abs_diff_vs_opencv']}.")
    m = result["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="an EchoNet-format folder (default: generate one)")
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--min-frames", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2000, help="clips drawn for the cached methods")
    parser.add_argument("--decode-samples", type=int, default=48, help="clips drawn for the decoding methods")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--mode", choices=("clips", "cache-lookup"), default="clips")
    parser.add_argument("--entries", default="100,1000,10000", help="cache-lookup: cache sizes, comma-separated")
    parser.add_argument("--lookups", type=int, default=200, help="cache-lookup: lookups of each kind per size")
    args = parser.parse_args(argv)
    if args.mode == "cache-lookup":
        result = run_cache_lookup([int(n) for n in args.entries.split(",")], args.lookups, args.seed)
        print(markdown_lookup(result))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
        return result
    result = run_benchmark(
        args.root,
        args.num_videos,
        args.min_frames,
        args.max_frames,
        args.clip_len,
        args.samples,
        min(args.decode_samples, args.samples),
        args.workers,
        args.seed,
    )
    print(markdown(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
