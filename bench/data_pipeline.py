"""Throughput of the fundus_ssl.data pipeline: decode + augment + collate (+ batch normalisation), images/s.

Two workloads, each with 0, 1 and 2 loader workers:
- DRIVE (real, 565x584 TIFF images and GIF masks, from `$FUNDUS_DATA/DRIVE` or `--root`): vessel
  segmentation DataLoaders, random 256 px patches at native resolution (FOV crop, affine, flips, jitter);
  skipped with a message when the data is absent.
- EyePACS-like JPEGs at 256 px, written by `fundus_ssl.synthetic` to a temporary folder: DR grading
  DataLoaders at 224 px (FOV crop, resize, affine, crop, flips, jitter).

Each configuration runs one untimed pass over the training DataLoader (worker start-up, caches), then
`--passes` timed passes; images/s = images loaded / seconds. With workers, each count is timed twice:
as fastai 2.8 runs them (new worker processes at every pass: its DataLoader builds a new torch iterator
per epoch, so its own `persistent_workers` has no effect; their start-up is part of the timed cost, as it
is in training, and small datasets like DRIVE's 20 training images pay it at every epoch), and kept
between passes (`persistent_workers=True`, `fundus_ssl.data.PersistentDL`).

    FUNDUS_DATA=/path/to/data python bench/data_pipeline.py
    python bench/data_pipeline.py --root /path/to/DRIVE --workers 0 1 2 --passes 3
"""
from __future__ import annotations
import argparse, os, tempfile, time
from pathlib import Path

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', help='the DRIVE folder (default: $FUNDUS_DATA/DRIVE)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='loader worker counts to time')
    p.add_argument('--passes', type=int, default=3, help='timed passes over the training set per configuration')
    p.add_argument('--n_synthetic', type=int, default=256, help='EyePACS-like images to write')
    p.add_argument('--bs', type=int, default=8, help='batch size')
    p.add_argument('--threads', type=int, default=1, help='OpenCV/torch threads per process')
    return p.parse_args()

def images_per_second(dl, passes:int) -> float:
    "Images per second over `passes` full passes of `dl`, after one untimed pass."
    for _ in dl: pass
    n, start = 0, time.perf_counter()
    for _ in range(passes):
        for xb, *_ in dl: n += len(xb)
    return n / (time.perf_counter() - start)

def columns_of(workers:list) -> list:
    "(column name, workers, kept) per timed configuration: fastai's workers, then kept ones, per worker count."
    return [(f'{w} workers' + (', kept' if kept else ''), w, kept) for w in workers for kept in ((False, True) if w else (False,))]

def main():
    args = parse_args()
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    import cv2, torch
    cv2.setNumThreads(args.threads); torch.set_num_threads(args.threads)
    from fundus_ssl.core import fundus_data_root
    from fundus_ssl.datasets import read_drive, read_eyepacs
    from fundus_ssl.synthetic import write_eyepacs_like
    from fundus_ssl.data import segmentation_dls, classification_dls

    workloads = {}
    drive = Path(args.root) if args.root else fundus_data_root('DRIVE')
    if drive and drive.exists():
        df = read_drive(drive)
        workloads['DRIVE 565x584 TIFF, 256 px patches'] = lambda w, kept: segmentation_dls(
            df, size=None, patch_size=256, bs=args.bs, num_workers=w, persistent_workers=kept, valid_split='test').train
    else: print('DRIVE: skipped (set FUNDUS_DATA or pass --root to time it)')
    tmp = tempfile.TemporaryDirectory()
    eyepacs = read_eyepacs(write_eyepacs_like(Path(tmp.name)/'EyePACS', n_patients=args.n_synthetic // 2, size=256))
    workloads[f'EyePACS-like 256 px JPEG -> 224 px'] = lambda w, kept: classification_dls(
        eyepacs, 'dr_grade', size=224, bs=args.bs, num_workers=w, persistent_workers=kept).train

    configs = columns_of(args.workers)
    columns = [c for c, *_ in configs]
    table = {}
    for name, make in workloads.items():
        for col, w, kept in configs:
            dl = make(w, kept)
            table[name, col] = images_per_second(dl, args.passes)
            table[name, 'n'] = len(dl.dataset)
            print(f'{name:36s} {col:20s}: {table[name, col]:7.1f} images/s', flush=True)
            if kept: dl.shutdown_workers()
    print(f'\nimages/s, decode + augment + collate, batch {args.bs}, {os.cpu_count()} CPUs, {args.threads} thread(s) per process')
    print('| workload | training images | ' + ' | '.join(columns) + ' |')
    print('|---|---|' + '---|' * len(columns))
    for name in workloads:
        print(f'| {name} | {table[name, "n"]} | ' + ' | '.join(f'{table[name, c]:.1f}' for c in columns) + ' |')
    tmp.cleanup()

if __name__ == '__main__': main()
