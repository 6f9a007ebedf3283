"""Checks of fundus_ssl.distributed in several processes, for tests/test_distributed.py.

    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT tests/scripts/ddp_checks.py OUT_DIR

Each process joins the gloo group with `init_distributed()`, runs the checks below and rank 0 writes what
they produced to OUT_DIR/results.pth; the test compares it with one process computing on the global batch.
The builders (`encoder`, `views`, `fit_learner`) are shared with the test so both sides build the same thing.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import SGD
from fastai.torch_core import set_seed
from fundus_ssl.distributed import (init_distributed, rank, world_size, concat_all_gather, gather_with_grad,
                                    batch_shuffle_ddp, batch_unshuffle_ddp, DDPTrainer)
from fundus_ssl.losses import nt_xent, supcon_loss
from tiny_runs import tiny_moco_learner, queue_net_learner
from fastai.callback.core import Callback, CancelFitException
from fundus_ssl.checkpoint import SaveState, checkpoints

GLOBAL_BATCH, DIM = 8, 6

def encoder():
    "A small MLP in float64 (so single- and multi-process results agree to ~1e-12), the same from every call."
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 5), nn.Tanh(), nn.Linear(5, 4)).double()

def views():
    "Two views [GLOBAL_BATCH, DIM] of a global batch and its labels."
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, DIM, generator=g, dtype=torch.float64), torch.randn(GLOBAL_BATCH, DIM, generator=g, dtype=torch.float64), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)

def losses(model, x1, x2, y, gather=gather_with_grad, labels=concat_all_gather):
    "NT-Xent and SupCon on the gathered embeddings of the two views (local rows in, global loss out)."
    z1, z2 = gather(model(x1)), gather(model(x2))
    return dict(nt_xent=nt_xent(z1, z2, temperature=0.5), supcon=supcon_loss(torch.stack([z1, z2], 1), labels(y), temperature=0.5))

def loss_and_grads(model, loss):
    "The loss value and the gradient of every parameter (then zeroed)."
    model.zero_grad(); loss.backward()
    out = dict(loss=loss.detach(), grads=[p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    return out

def fit_learner(bs, cbs=(), n=32, epochs=2):
    "Fit a linear classifier on shuffled random data with SGD; returns the learner."
    set_seed(0)
    x, y = torch.randn(n, DIM), torch.randint(0, 3, (n,))
    items = list(zip(x, y))
    dls = DataLoaders.from_dsets(items, items[:8], bs=bs, shuffle=True, device='cpu', num_workers=0)
    learn = Learner(dls, nn.Linear(DIM, 3), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, lr=0.1)
    with learn.no_logging(): learn.fit(epochs, cbs=list(cbs))
    return learn

def check_collectives(r):
    "Uneven gathers, shuffle-BN round trip, and the summed gradient of gather_with_grad."
    x = torch.arange(6.).view(3, 2)[:3 - r] + 100 * r                # 3 rows on rank 0, 2 on rank 1
    shuffled, idx = batch_shuffle_ddp(x)
    xg = x.clone().requires_grad_()
    w = torch.arange(10.).view(5, 2) * (r + 1)                       # each rank weighs the gathered rows differently
    (gather_with_grad(xg) * w).sum().backward()
    return dict(gathered=concat_all_gather(x), shuffled=concat_all_gather(shuffled),
                unshuffled_ok=concat_all_gather(torch.tensor([bool((batch_unshuffle_ddp(shuffled, idx) == x).all())])),
                grad=concat_all_gather(xg.grad))

def check_losses(r):
    "NT-Xent and SupCon through DDP with gathered negatives, and with local negatives only."
    model = DDP(encoder())
    x1, x2, y = views()
    part = slice(r * GLOBAL_BATCH // world_size(), (r + 1) * GLOBAL_BATCH // world_size())
    gathered = {k: loss_and_grads(model, l) for k in ('nt_xent', 'supcon')
                for l in [losses(model, x1[part], x2[part], y[part])[k]]}
    local = loss_and_grads(model, losses(model, x1[part], x2[part], y[part], gather=lambda z: z, labels=lambda t: t)['nt_xent'])
    return dict(gathered=gathered, local_nt_xent=local)

def check_fit():
    "A fastai fit under DDPTrainer with a per-process batch size of 4."
    learn = fit_learner(bs=4, cbs=[DDPTrainer()])
    return dict(state=learn.model.state_dict(), n_iter=learn.train_iter)

def moco_fit(bs, bn_splits, cbs=(), epochs=2, **kwargs):
    "Fit the tiny MoCo learner; `bs` images per process, `bn_splits` BatchNorm groups per view."
    learn = tiny_moco_learner(bs=bs, bn_splits=bn_splits, **kwargs)
    with learn.no_logging(): learn.fit(epochs, 3e-3, cbs=list(cbs))
    return learn

def moco_result(learn) -> dict:
    "What a MoCo run is compared by: smoothed training losses, queue, pointer and parameters (not BN running statistics)."
    params = {k: v for k, v in learn.model.state_dict().items() if 'running_' not in k and 'num_batches' not in k}
    return dict(losses=torch.stack(learn.recorder.losses), queue=learn.model.queue, ptr=learn.model.queue_ptr, params=params)

def check_moco():
    """MoCo v2 under DDPTrainer: 4 images per process, one BatchNorm group each, deterministic views, no shuffle-BN
    (comparable with one process, bs 8, 2 groups); and with random views and shuffle-BN: the queue of every process."""
    exact = moco_result(moco_fit(bs=4, bn_splits=1, cbs=[DDPTrainer()], fixed_views=True, shuffle_bn=False))
    learn = moco_fit(bs=4, bn_splits=1, cbs=[DDPTrainer()], epochs=1)
    return dict(exact=exact, queues=concat_all_gather(learn.model.queue[None]), ptrs=concat_all_gather(learn.model.queue_ptr[None]),
                first_params=concat_all_gather(next(learn.model.parameters()).detach()[None]))

class StopAfter(Callback):
    "Cancel the fit after `n` epochs (after SaveState wrote its checkpoint), as an interruption would."
    order = SaveState.order + 1
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise CancelFitException

def resume_fit(path, r, cbs=(), resume=False, epochs=3):
    "The QueueNet run under DDPTrainer + SaveState, with a different random stream on each process."
    learn = queue_net_learner()
    torch.manual_seed(1000 + r)  # dropout and flips differ between processes: each must restore its own generators
    with learn.no_logging(): learn.fit_one_cycle(epochs, 1e-2, cbs=[DDPTrainer(), SaveState(path, resume=resume), *cbs])
    return learn

def check_resume(out, r):
    "Interrupt a 2-process run after epoch 2, resume it in new learners, compare with an uninterrupted run."
    reference = resume_fit(out/'reference', r)
    resume_fit(out/'run', r, [StopAfter(2)])
    files = sorted(p.name for p in (out/'run').iterdir())
    resumed = resume_fit(out/'run', r, resume=True)
    return dict(files=files, reference=concat_all_gather(next(reference.model.parameters()).detach()[None]),
                resumed=concat_all_gather(next(resumed.model.parameters()).detach()[None]),
                same=concat_all_gather(torch.tensor([all(torch.equal(a, b) for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()))])))

if __name__ == '__main__':
    torch.set_num_threads(1)
    assert init_distributed(), 'run me with torchrun --nproc_per_node 2'
    r = rank()
    results = dict(world_size=world_size(), collectives=check_collectives(r), losses=check_losses(r), fit=check_fit(),
                   moco=check_moco(), resume=check_resume(Path(sys.argv[1]), r))
    if r == 0: torch.save(results, Path(sys.argv[1])/'results.pth')
