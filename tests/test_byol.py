"BYOL on synthetic fundus images: the loss falls, the target follows the cosine schedule, its state survives save/load, summary, lr_find and refits; bf16."
import math
import pytest
import torch
import matplotlib.pyplot as plt
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastcore.basics import noop
from fundus_ssl.synthetic import write_eyepacs_like
from fundus_ssl.datasets import read_eyepacs
from fundus_ssl.pretrain import unlabeled_dls, cosine_momentum
from fundus_ssl.byol import BYOL, BYOLModel, byol_learner, byol_model

BS = 16


class FewSteps(Callback):
    "Stop a fit after `n` training batches (bfloat16 is slow on a CPU)."
    order = 100  # after the other callbacks' after_batch (and TrainEvalCallback's count)
    def __init__(self, n=3): self.n = n
    def after_batch(self):
        if self.training and self.train_iter >= self.n: raise CancelFitException()


class RawLosses(Callback):
    "The loss of every training batch."
    def before_fit(self): self.values = []
    def after_batch(self):
        if self.training: self.values.append(self.learn.loss.item())


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    "96 synthetic EyePACS-like images (86 train, 10 valid) at 64 px, batches of 16."
    root = write_eyepacs_like(tmp_path_factory.mktemp('data')/'EyePACS', n_patients=48, size=96, seed=0)
    return unlabeled_dls(read_eyepacs(root), size=64, bs=BS)


def learner(dls, path, **kwargs):
    "A quiet BYOL learner on timm's test_resnet, scaled-down heads."
    learn = byol_learner(dls, 'test_resnet', path=path, **dict(dict(dim=32, hidden=64, p_blur=0.), **kwargs))
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    return learn

def state(model): return {k: v.clone() for k, v in model.state_dict().items()}

def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


def test_byol_lowers_its_loss(dls, tmp_path):
    "BYOL's own views (crops of 8-100%, colour jitter, grayscale), six short epochs."
    torch.manual_seed(0)
    raw = RawLosses()
    learn = learner(dls, tmp_path, cbs=raw)
    learn.fit_one_cycle(6, 3e-3)
    first, last = sum(raw.values[:5]) / 5, sum(raw.values[-10:]) / 10
    assert 0 <= min(raw.values) and max(raw.values) <= 8
    assert last < first - 0.5, raw.values


def test_target_follows_the_cosine_schedule(dls, tmp_path):
    "After each step the target moves with momentum 1 - (1 - 0.99)(cos(pi p) + 1)/2, p = fastai's pct_train."
    class Momenta(Callback):
        order = BYOL.order + 1
        def before_fit(self): self.m, self.pct = [], []
        def before_step(self): self.pct.append(self.learn.pct_train)
        def after_step(self): self.m.append(self.learn.byol.m)
    torch.manual_seed(0)
    rec = Momenta()
    learn = learner(dls, tmp_path, cbs=rec)
    online, target = learn.model.projector[0].weight, learn.model.target_projector[0].weight
    checks = []
    learn.model.update_target = (lambda update: lambda m: (checks.append((target.clone(), online.clone(), m)), update(m),
                                                           checks.append(target.clone())))(learn.model.update_target)
    learn.fit(2, 1e-3)
    assert rec.m == [cosine_momentum(0.99, p) for p in rec.pct] and len(rec.m) == 10
    assert rec.m[0] == pytest.approx(0.99) and rec.m[-1] > 0.999
    for (t0, o, m), t1 in zip(checks[0::2], checks[1::2]): torch.testing.assert_close(t1, m * t0 + (1 - m) * o)


def test_save_load_round_trips_the_target(dls, tmp_path):
    torch.manual_seed(0)
    learn = learner(dls, tmp_path)
    learn.fit(1, 1e-3)
    saved = state(learn.model)
    assert not torch.equal(saved['target_projector.0.weight'], saved['projector.0.weight'])
    learn.save('byol')
    fresh = learner(dls, tmp_path)
    fresh.load('byol')
    assert_same(state(fresh.model), saved)


def test_summary_show_validate_and_lr_find_leave_state_alone(dls, tmp_path):
    torch.manual_seed(0)
    learn = learner(dls, tmp_path)
    learn.fit(1, 1e-3)
    before = state(learn.model)
    learn.summary()
    learn.dls.show_batch(max_n=2); learn.byol.show(n=2); plt.close('all')
    learn.validate()
    assert_same(state(learn.model), before)
    learn.lr_find(num_it=6, show_plot=False)      # trains a few steps, then reloads the model it saved
    assert_same(state(learn.model), before)


def test_second_fit_continues_from_the_target(dls, tmp_path):
    class AtStart(Callback):
        def before_train(self):
            if self.epoch == 0: self.target = self.learn.model.target_projector[0].weight.clone()
    torch.manual_seed(0)
    learn = learner(dls, tmp_path)
    learn.fit(1, 1e-3)
    target = learn.model.target_projector[0].weight.clone()
    start = AtStart()
    learn.fit(1, 1e-3, cbs=start)
    assert torch.equal(start.target, target)                                     # not reset or re-copied
    assert not torch.equal(learn.model.target_projector[0].weight, target)      # and it moves on


def test_bf16_on_cpu(dls, tmp_path):
    "to_bf16 runs the online and target networks in bfloat16 on the CPU; the loss is float32."
    seen = {'pred': set(), 'target': set(), 'loss': set()}
    class Targets(Callback):
        order = BYOL.order + 1
        def before_batch(self): seen['target'].add(self.learn.yb[0]['z'].dtype)
        def after_loss(self): seen['loss'].add(self.learn.loss_grad.dtype)
    torch.manual_seed(0)
    raw = RawLosses()
    learn = learner(dls, tmp_path, cbs=[Targets(), raw, FewSteps()]).to_bf16()
    learn.model.predictor.register_forward_hook(lambda m, i, o: seen['pred'].add(o.dtype))
    learn.fit(1, 1e-3)
    assert seen == {'pred': {torch.bfloat16}, 'target': {torch.bfloat16}, 'loss': {torch.float32}}
    assert len(raw.values) == 3 and all(math.isfinite(v) for v in raw.values)


def test_paper_setting_dimensions():
    m = byol_model('resnet18')
    assert [l.out_features for l in m.projector if hasattr(l, 'out_features')] == [1024, 256]  # 4096 -> 256 on a ResNet-50
    assert [l.out_features for l in m.predictor if hasattr(l, 'out_features')] == [1024, 256]
    assert isinstance(m, BYOLModel) and not hasattr(m, 'target_predictor')
    assert BYOL().momentum == 0.99 and BYOL().cosine
