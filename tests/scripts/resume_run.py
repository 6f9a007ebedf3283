"""A tiny resumable training run for tests/test_checkpoint.py (seconds on one CPU core).

    python tests/scripts/resume_run.py --path RUN_DIR [--kind plain|moco] [--resume] [--epochs 6] [--sleep 0.3]
                                       [--pause-after N [--ready FILE]] [--out final.pth]

Fits a seeded tiny learner (`tiny_runs.py`: a CNN with a queue buffer, dropout, shuffled data, random flips and a
callback-held `torch.Generator`; or MoCo v2 with its augmentations) with `fit_one_cycle` and
`SaveState(RUN_DIR, resume=...)`. `--pause-after N` touches a ready file (`--ready`, default RUN_DIR.ready) once the
checkpoint of epoch N is written, then waits to be killed (`tiny_runs.Pause`): a test that waits for the file and
kills the process knows the run holds exactly N epochs, on any machine. `--sleep` slows every epoch down (without
drawing random numbers). `--out` writes the final model state dict.
"""
import argparse, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import queue_net_learner, tiny_moco_learner, Slow, Pause
from fundus_ssl.checkpoint import SaveState

LEARNERS = dict(plain=(queue_net_learner, 1e-2), moco=(tiny_moco_learner, 3e-3))

def train(path, kind='plain', epochs=6, resume=False, sleep=0., seed=0, pause_after=None, ready=None):
    "Build the `kind` learner from `seed` and fit it with `SaveState(path, resume=resume)`; returns the learner."
    make, lr = LEARNERS[kind]
    learn = make(seed=seed)
    cbs = [SaveState(path, resume=resume, config=dict(kind=kind, seed=seed, lr=lr)), Slow(sleep)]
    if pause_after: cbs.append(Pause(pause_after, ready or f'{path}.ready'))
    with learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=cbs)
    return learn

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--path', required=True)
    p.add_argument('--kind', choices=list(LEARNERS), default='plain')
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--sleep', type=float, default=0.)
    p.add_argument('--pause-after', type=int, help='after the checkpoint of this epoch, touch --ready and wait to be killed')
    p.add_argument('--ready', help='the file --pause-after touches (default: RUN_DIR.ready)')
    p.add_argument('--out')
    a = p.parse_args()
    learn = train(a.path, a.kind, a.epochs, a.resume, a.sleep, pause_after=a.pause_after, ready=a.ready)
    if a.out: torch.save(learn.model.state_dict(), a.out)
