"""Tiny, seeded fastai runs shared by the scripts and tests of checkpoint and distributed (seconds on one CPU core)."""
import os, sys, time
from pathlib import Path
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fundus_ssl.checkpoint import SaveState

class QueueNet(nn.Module):
    "Tiny CNN whose logits also depend on a queue of past features, written in every training step."
    def __init__(self, n_classes=2, width=8, queue=20):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(width, n_classes)
        self.register_buffer('queue', torch.zeros(queue, width))
        self.register_buffer('ptr', torch.zeros((), dtype=torch.long))

    def forward(self, x):
        f = self.body(x)
        if self.training:
            n, p = len(f), int(self.ptr)
            self.queue[p:p + n] = f.detach()[:len(self.queue) - p]
            self.ptr.fill_((p + n) % len(self.queue))
        return self.head(f) + (f @ self.queue.T).mean(1, keepdim=True)

class RandomAugs(Callback):
    "A flip from torch's global generator and noise from a generator of its own."
    order = 5
    def __init__(self, seed=1): self.generator = torch.Generator().manual_seed(seed)
    def before_batch(self):
        if not self.training: return
        x = self.xb[0]
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
        self.learn.xb = (x + 0.1 * torch.randn(x.shape, generator=self.generator),)

class Slow(Callback):
    "Sleep after every epoch (drawing no random numbers), so a test can kill the process between checkpoints."
    def __init__(self, seconds): self.seconds = seconds
    def after_epoch(self): time.sleep(self.seconds)

class Pause(Callback):
    """After the checkpoint of epoch `after` is written, touch `ready` and wait to be killed: the kill lands between two
    known checkpoints however busy the machine is. The wait ends with an error if the parent process is gone or after
    `hang` seconds (FUNDUS_TEST_TIMEOUT, default 3600), so a forgotten child does not live on."""
    order = SaveState.order + 1   # its checkpoint of this epoch is on disk
    def __init__(self, after:int, ready, hang:float|None=None):
        self.after, self.ready = after, Path(ready)
        self.hang = hang or float(os.environ.get('FUNDUS_TEST_TIMEOUT') or 3600)
    def after_epoch(self):
        if self.epoch + 1 != self.after: return
        parent, deadline = os.getppid(), time.monotonic() + self.hang
        self.ready.touch()
        while os.getppid() == parent and time.monotonic() < deadline: time.sleep(0.05)
        sys.exit(f'paused after epoch {self.after} and not killed (parent gone or {self.hang:g} s passed)')

def without_bars(learn:Learner) -> Learner:
    "`learn` without fastai's progress bars (present when something imported fastai.callback.progress)."
    return learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback'])

def queue_net_learner(seed=0, n=64, size=16, bs=8):
    "A classifier `Learner` (QueueNet, Adam) on shuffled random images with `RandomAugs`, all from `seed`."
    torch.set_num_threads(1)  # the same reduction order in every process
    set_seed(seed)
    x, y = torch.randn(n, 3, size, size), torch.randint(0, 2, (n,))
    items = list(zip(x, y))
    dls = DataLoaders.from_dsets(items[:n * 3 // 4], items[n * 3 // 4:], bs=bs, shuffle=True, device='cpu', num_workers=0)
    return without_bars(Learner(dls, QueueNet(), loss_func=CrossEntropyLossFlat(), cbs=RandomAugs()))

FIXED_VIEWS = dict(scale=(1., 1.), ratio=(1., 1.), p_jitter=0., p_gray=0., p_blur=0.)  # whole image, no colour change

def tiny_moco_learner(seed=0, n=32, size=32, bs=8, bn_splits=2, queue_size=16, fixed_views=False, shuffle_bn=True):
    """A MoCo v2 `Learner` ('test_resnet', 32 px views) on `fundus_like_batch` images, all from `seed`.
    `fixed_views`: view 1 is the image, view 2 its mirror image, so the views do not depend on random numbers."""
    from fundus_ssl.augment import aug_settings, fundus_like_batch
    from fundus_ssl.moco import moco_learner
    torch.set_num_threads(1)
    set_seed(seed)
    items = [(x,) for x in fundus_like_batch(n + 8, size, seed=seed)]
    dls = DataLoaders.from_dsets(items[:n], items[n:], bs=bs, shuffle=True, device='cpu', num_workers=0)
    aug = (aug_settings(size=size, p_flip=0., **FIXED_VIEWS), aug_settings(size=size, p_flip=1., **FIXED_VIEWS)) if fixed_views else 'mocov2'
    learn = moco_learner(dls, 'test_resnet', queue_size=queue_size, dim=8, bn_splits=bn_splits, aug=aug, size=size,
                         **({} if fixed_views else dict(p_blur=0.)))
    learn.model.shuffle_bn = shuffle_bn
    return without_bars(learn)
