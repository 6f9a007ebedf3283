"""Time from the start of an epoch to its first batch, fastai's loader workers (forked anew at every epoch) against
kept ones (`persistent_workers=True`, `fundus_ssl.data.PersistentDL`), in a process holding `--resident-gb` of
memory, as a training process does (its model, optimizer state, MoCo queue, CUDA context). Forking copies the
process's page tables, so fastai's epoch start grows with the process; kept workers were forked once.

    python bench/epoch_start.py                              # 0, 4 and 12 GB resident, 2 workers
    python bench/epoch_start.py --resident-gb 0 16 --workers 8
"""
from __future__ import annotations
import argparse, statistics, subprocess, sys, tempfile, time
from pathlib import Path

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--resident-gb', type=float, nargs='+', default=[0, 4, 12], help='memory the process holds while it loads')
    p.add_argument('--workers', type=int, default=2, help='loader workers')
    p.add_argument('--epochs', type=int, default=3, help='timed epochs (after an untimed one); the median is printed')
    p.add_argument('--one', type=float, help=argparse.SUPPRESS)   # internal: one resident size, in this process
    return p.parse_args()

def first_batch_ms(dl, epochs:int) -> float:
    "Median ms from the start of an epoch to its first batch, over `epochs` epochs after an untimed one."
    for _ in dl: pass
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for i, _ in enumerate(dl):
            if i == 0: times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)

def one_size(gb:float, workers:int, epochs:int):
    import torch
    from fundus_ssl.synthetic import write_eyepacs_like
    from fundus_ssl.datasets import read_eyepacs
    from fundus_ssl.pretrain import unlabeled_dls
    resident = torch.ones(int(gb * 2**30 / 4)) if gb else None      # touched pages: resident, not just reserved
    df = read_eyepacs(write_eyepacs_like(Path(tempfile.mkdtemp())/'EyePACS', n_patients=32, size=128, seed=0))
    row = [f'{gb:g}']
    for kept in (False, True):
        dl = unlabeled_dls(df, size=64, bs=8, num_workers=workers, persistent_workers=kept, valid_pct=0.1).train
        row.append(f'{first_batch_ms(dl, epochs):.0f}')
        if kept: dl.shutdown_workers()
    print('| ' + ' | '.join(row) + ' |', flush=True)

def main():
    args = parse_args()
    if args.one is not None: return one_size(args.one, args.workers, args.epochs)
    print(f'ms to the first batch of an epoch, {args.workers} workers\n\n| resident GB | fastai (forked every epoch) | kept |\n|---|---|---|', flush=True)
    for gb in args.resident_gb:   # a fresh process per size, so that sizes do not add up
        subprocess.run([sys.executable, __file__, '--one', str(gb), '--workers', str(args.workers), '--epochs', str(args.epochs)], check=True)

if __name__ == '__main__': main()
