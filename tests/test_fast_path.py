"The fast path on a CPU: compiled encoders give the eager results, the fused optimizer steps like the unfused one, MoCo trains with every switch."
import math, random, warnings
from functools import partial
import pytest, torch
from torch import nn
from fundus_ssl.pretrain import (as_encoder, compile_encoders, uncompile_encoders, fast_path, torch_opt_func, momentum_update,
                                 frozen_copy, unlabeled_dls)
from fundus_ssl.moco import moco_learner
from fundus_ssl.synthetic import write_eyepacs_like
from fundus_ssl.datasets import read_eyepacs

warnings.filterwarnings('ignore', message='CUDA is not available')


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    df = read_eyepacs(write_eyepacs_like(tmp_path_factory.mktemp('d')/'EyePACS', n_patients=32, size=80, seed=0))
    return unlabeled_dls(df, size=64, bs=16)


def test_compiled_encoders_match_eager():
    enc = as_encoder('test_resnet')
    model = nn.ModuleDict(dict(online=enc, target=frozen_copy(enc)))
    x = torch.rand(4, 3, 64, 64)
    eager = enc.forward_features(x)
    keys = set(model.state_dict())
    try:
        assert compile_encoders(model) == 2 and compile_encoders(model) == 0    # twice: nothing more to compile
        torch.testing.assert_close(enc.forward_features(x), eager, atol=1e-4, rtol=1e-4)
        assert set(model.state_dict()) == keys                                   # checkpoints unchanged
    finally: uncompile_encoders(model)
    assert 'forward_features' not in vars(enc.model)


@pytest.mark.parametrize('kind,kw', [('adamw', {}), ('sgd', dict(momentum=0.9))])
def test_fused_steps_like_unfused(kind, kw):
    torch.manual_seed(0)
    nets = [nn.Linear(8, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch_opt_func(kind, fused=f, **kw)(list(n.parameters()), lr=1e-2) for n, f in zip(nets, (True, None))]
    assert opts[0].opt.defaults['fused'] is True
    x = torch.randn(16, 8)
    for _ in range(3):
        for n, o in zip(nets, opts):
            o.zero_grad(); n(x).square().mean().backward(); o.step()
    for a, b in zip(*(n.parameters() for n in nets)): torch.testing.assert_close(a, b)
    assert not torch.equal(nets[0].weight, nn.Linear(8, 4).weight)


def test_foreach_momentum_update():
    online, target = nn.Linear(3, 4), nn.Linear(3, 4)
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, 0.99)
    momentum_update(nn.Identity(), nn.Identity(), 0.99)       # no parameters: nothing to do
    for t, b, o in zip(target.parameters(), before, online.parameters()): torch.testing.assert_close(t, 0.99 * b + 0.01 * o)


def _moco_losses(dls, fast:bool, **switches):
    from fastai.torch_core import set_seed
    set_seed(0, reproducible=True)
    learn = moco_learner(dls, 'test_resnet', queue_size=32, dim=16, bn_splits=2, momentum=0.99, p_blur=0.,
                         opt_func=torch_opt_func('adamw', fused=None))
    if fast: fast_path(learn, **switches)
    set_seed(1, reproducible=True)
    for dl in dls.loaders: dl.rng = random.Random(0)      # fastai loaders shuffle with their own generator
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 3e-3)
    return learn, torch.stack([torch.as_tensor(v) for v in learn.recorder.losses])


def test_moco_fast_path_same_losses(dls):
    "fp32 switches (channels-last, fused AdamW, sync-free recorder) change the speed, not the numbers; bf16 trains."
    _, plain = _moco_losses(dls, False)
    learn, fast = _moco_losses(dls, True, bf16=False)
    assert type(learn.opt.opt) is torch.optim.AdamW and learn.opt.opt.defaults['fused'] is True
    assert len(plain) >= 4 and not torch.allclose(plain[0], plain[-1])
    torch.testing.assert_close(fast, plain, atol=2e-3, rtol=1e-3)
    learn, bf16 = _moco_losses(dls, True)
    assert learn.mixed_precision is not None and bool(torch.isfinite(bf16).all())
    assert (bf16 - plain).abs().max() < 0.5            # same run in bfloat16: close, not equal


def test_kept_workers_train_as_the_main_process(dls):
    "fast_path keeps loader workers between epochs; MoCo's losses are those of a loader without workers, epoch after epoch."
    df = dls.train.items                                  # the same rows, loaded by one worker process
    with_worker = unlabeled_dls(df.assign(split='train'), size=64, bs=16, num_workers=1, valid_pct=0.2)
    _, main = _moco_losses(unlabeled_dls(df.assign(split='train'), size=64, bs=16, valid_pct=0.2), True, bf16=False)
    learn, kept = _moco_losses(with_worker, True, bf16=False)
    torch.testing.assert_close(kept, main)
    pids = lambda: [w.pid for w in with_worker.train.__dict__['_workers'][1]._iterator._workers]
    before = pids()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 3e-3)
    assert type(with_worker.train).__name__ == 'PersistentTfmdDL' and pids() == before and len(before) == 1
    with_worker.train.shutdown_workers(); with_worker.valid.shutdown_workers()
