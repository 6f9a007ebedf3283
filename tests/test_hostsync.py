"""A training step of every pretraining method makes the host wait for the device nowhere (`fundus_ssl.hostsync`).

On the CPU, `learner_host_syncs` runs whole fastai steps (views, forward, loss, backward, optimizer, callbacks) and
finds no host read and no data-dependent shape with `fast_path`; without it, it finds fastai's progress bar, so the
check sees what it should. On fake CUDA tensors (no GPU needed) the forward part of each step, where constants and
random parameters could come from the host, makes no blocking copy either."""
import warnings
import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.callback.progress import ProgressCallback  # noqa: F401  (fastai's default progress bar, as users have it)
from fundus_ssl.augment import fundus_like_batch
from fundus_ssl.hostsync import learner_host_syncs, fake_cuda, no_host_sync
from fundus_ssl.pretrain import fast_path, SSLCallback, MomentumModel
from fundus_ssl.moco import moco_learner, MoCoModel
from fundus_ssl.byol import byol_learner
from fundus_ssl.swcl import swcl_learner

N, BS = 48, 16
IMAGES = fundus_like_batch(N, 64, seed=0)
LABELS = dict(patient=torch.arange(N) // 2, position=torch.arange(N) % 5, abnormality=torch.arange(N) % 2)

def loaders(labels:bool) -> DataLoaders:
    items = [(x, {k: v[i] for k, v in LABELS.items()}) if labels else (x,) for i, x in enumerate(IMAGES)]
    return DataLoaders(DataLoader(items, bs=BS, shuffle=True, drop_last=True), DataLoader(items[:BS], bs=BS))

METHODS = {
    'mocov2': lambda: moco_learner(loaders(False), 'test_resnet', queue_size=64, bn_splits=2),
    'mocov2 local + zca': lambda: moco_learner(loaders(False), 'test_resnet', queue_size=64, bn_splits=2, local=True, decorrelation='zca'),
    'mocov2 iternorm': lambda: moco_learner(loaders(False), 'test_resnet', queue_size=64, bn_splits=2, decorrelation='iternorm'),
    'byol': lambda: byol_learner(loaders(False), 'test_resnet'),
    'swcl': lambda: swcl_learner(loaders(True), 'test_resnet'),
}

@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield

@pytest.mark.parametrize('method', METHODS)
def test_step_makes_the_host_wait_nowhere(method):
    torch.manual_seed(0)
    learn = fast_path(METHODS[method](), bf16=False, channels_last=False)   # bf16 is slow on a CPU; it adds autocast only
    found = learner_host_syncs(learn, n_batches=3)
    assert found == [], '\n'.join(f'{n} batches: {s}' for s, n in found)

def test_the_check_finds_fastais_progress_bar():
    torch.manual_seed(0)
    found = learner_host_syncs(METHODS['mocov2'](), n_batches=3)   # fastai as it comes: the bar formats the loss
    assert len(found) == 1, found
    sync, batches = found[0]
    assert batches == 3 and sync.op == '_local_scalar_dense' and 'smooth_loss' in sync.where, sync

@pytest.mark.parametrize('method', METHODS)
def test_forward_on_fake_cuda_copies_nothing_blocking(method):
    torch.manual_seed(0)
    learn = METHODS[method]()
    cb = next(c for c in learn.cbs if isinstance(c, SSLCallback))
    with fake_cuda():
        model = learn.model.to('cuda').train()
        learn.training = True
        x = IMAGES[:BS].to('cuda', non_blocking=True)
        labels = [{k: v[:BS].to('cuda', non_blocking=True) for k, v in LABELS.items()}] if method == 'swcl' else []
        with no_host_sync():
            views = cb.views(x)
            pred = model(*cb.inputs(views))
            loss = cb.ssl_loss(pred, cb.targets(views), *labels)
            if isinstance(model, MomentumModel): model.update_target(0.99)
            if isinstance(model, MoCoModel): model.enqueue(cb._keys)
    assert loss.device.type == 'cuda' and loss.dim() == 0
