"""A tiny resumable training run for tests/test_checkpoint.py (seconds on one CPU core).

    python tests/scripts/resume_run.py --path RUN_DIR [--kind plain|moco] [--resume] [--epochs 6] [--sleep 0.3] [--out final.pth]

Fits a seeded tiny learner (`tiny_runs.py`: a CNN with a queue buffer, dropout, shuffled data, random flips and a
callback-held `torch.Generator`; or MoCo v2 with its augmentations) with `fit_one_cycle` and
`SaveState(RUN_DIR, resume=...)`. `--sleep` slows every epoch down (without drawing random numbers) so a test can
kill the process between two checkpoints. `--out` writes the final model state dict.
"""
import argparse, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import queue_net_learner, tiny_moco_learner, Slow
from fundus_ssl.checkpoint import SaveState

LEARNERS = dict(plain=(queue_net_learner, 1e-2), moco=(tiny_moco_learner, 3e-3))

def train(path, kind='plain', epochs=6, resume=False, sleep=0., seed=0):
    "Build the `kind` learner from `seed` and fit it with `SaveState(path, resume=resume)`; returns the learner."
    make, lr = LEARNERS[kind]
    learn = make(seed=seed)
    cbs = [SaveState(path, resume=resume, config=dict(kind=kind, seed=seed, lr=lr)), Slow(sleep)]
    with learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=cbs)
    return learn

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--path', required=True)
    p.add_argument('--kind', choices=list(LEARNERS), default='plain')
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--sleep', type=float, default=0.)
    p.add_argument('--out')
    a = p.parse_args()
    learn = train(a.path, a.kind, a.epochs, a.resume, a.sleep)
    if a.out: torch.save(learn.model.state_dict(), a.out)
