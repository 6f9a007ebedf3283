"DINO: a run resumed from a checkpoint matches an uninterrupted one bit for bit; schedules inside a fit; the centre under DDP; no host sync with the fast path."
import warnings
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.torch_core import set_seed
from fundus_ssl.augment import fundus_like_batch
from fundus_ssl.checkpoint import SaveState, checkpoints
from fundus_ssl.hostsync import learner_host_syncs
from fundus_ssl.pretrain import fast_path, cosine_momentum
from fundus_ssl.dino import DINO, DINOModel, dino_learner, dino_model, teacher_temperature

TINY = dict(out_dim=64, hidden=32, bottleneck=16, size=32, local_size=16, n_local=2)
# the teacher temperature changes at every epoch and the last layer is frozen in epoch 0: the resume crosses both
SCHEDULES = dict(warmup_teacher_temp=0.02, teacher_temp=0.05, warmup_teacher_temp_epochs=3, freeze_last_layer=1)

@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield

def tiny_learner(seed=0, n=32, bs=8, **kwargs):
    "A seeded DINO learner ('test_resnet', 32 px global and 16 px local crops, K=64) on `fundus_like_batch` images."
    torch.set_num_threads(1)
    set_seed(seed)
    items = [(x,) for x in fundus_like_batch(n + 8, 32, seed=seed)]
    dls = DataLoaders.from_dsets(items[:n], items[n:], bs=bs, shuffle=True, device='cpu', num_workers=0)
    learn = dino_learner(dls, 'test_resnet', **{**TINY, **SCHEDULES, **kwargs})
    return learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback'])

class StopAfter(Callback):
    "Cancel the fit after `n` epochs, once SaveState has written their checkpoint (as a kill would)."
    order = SaveState.order + 1
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise CancelFitException

def fit(path=None, stop=None, resume=False, epochs=3):
    learn = tiny_learner()
    cbs = ([SaveState(path, resume=resume)] if path else []) + ([StopAfter(stop)] if stop else [])
    with learn.no_logging(): learn.fit_one_cycle(epochs, 3e-3, cbs=cbs)
    return learn


def test_resume_is_bitwise_exact(tmp_path):
    "Stopped after 2 of 3 epochs and resumed in a new learner: student, teacher, centre and losses equal the uninterrupted run's."
    reference = fit()
    fit(tmp_path/'run', stop=2)
    assert max(checkpoints(tmp_path/'run')) == 2
    resumed = fit(tmp_path/'run', resume=True)
    ref, got = reference.model.state_dict(), resumed.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref: assert torch.equal(ref[k], got[k]), k
    assert torch.equal(torch.stack(reference.recorder.losses), torch.stack(resumed.recorder.losses))
    fresh = tiny_learner().model.state_dict()
    assert not torch.equal(ref['center'], fresh['center'])                                   # the run moved the centre,
    assert not torch.equal(ref['teacher_projector.mlp.0.weight'], fresh['teacher_projector.mlp.0.weight'])   # the teacher


def test_schedules_inside_a_fit():
    "Each batch's loss uses the epoch's teacher temperature; each step's momentum is the cosine at pct_train."
    class Seen(Callback):
        order = DINO.order + 1
        def before_fit(self): self.temps, self.m, self.pct = [], [], []
        def after_loss(self):
            if self.training: self.temps.append((self.epoch, self.learn.dino.temperature))
        def before_step(self): self.pct.append(self.learn.pct_train)
        def after_step(self): self.m.append(self.learn.dino.m)
    learn, seen = tiny_learner(), Seen()
    with learn.no_logging(): learn.fit(4, 1e-3, cbs=seen)
    assert [t for _, t in seen.temps] == [teacher_temperature(e, 0.02, 0.05, 3) for e, _ in seen.temps]
    assert sorted({t for _, t in seen.temps}) == pytest.approx([0.02, 0.035, 0.05])
    assert seen.m == [cosine_momentum(0.996, p) for p in seen.pct] and len(seen.m) == 16


def test_centre_follows_every_training_batch():
    "After a fit the centre is the running mean of the teacher outputs of every training batch, in order (validation adds none)."
    class Teacher(Callback):
        order = DINO.order + 1
        def before_fit(self): self.outs = []
        def after_batch(self):
            if self.training: self.outs.append(self.learn.yb[0]['t'].clone())
    learn, rec = tiny_learner(), Teacher()
    with learn.no_logging(): learn.fit(1, 1e-3, cbs=rec)
    c = torch.zeros(1, 64)
    for t in rec.outs: c = c * 0.9 + t.mean(0, keepdim=True) * 0.1
    torch.testing.assert_close(learn.model.center, c, rtol=1e-5, atol=1e-6)
    assert len(rec.outs) == 4


def test_fast_path_step_makes_the_host_wait_nowhere():
    learn = fast_path(tiny_learner(), bf16=False, channels_last=False)
    found = learner_host_syncs(learn, n_batches=2)
    assert found == [], '\n'.join(f'{n} batches: {s}' for s, n in found)


def test_model_and_settings_errors():
    learn = tiny_learner()
    learn.model = learn.model.encoder
    with pytest.raises(TypeError, match='DINO trains a DINOModel'), learn.no_logging(): learn.fit(1)
    with pytest.raises(ValueError, match="expected 'dino', \(global 1"): DINO(aug='byol')
    with pytest.raises(ValueError, match='n_local=-2'): DINO(n_local=-2)


# ---- the centre under DDP --------------------------------------------------------------------------------------
def test_ddp_centre_is_the_global_batch_mean(monkeypatch):
    """Under DDP the centre moves with the mean over all processes' rows: one all-reduce of (sum, count), so uneven
    shares (3 and 5 rows) give the mean of all 8. The other process is simulated (two real processes cost a minute
    of imports on 2 cores): its all-reduce contribution is added, as gloo would."""
    import fundus_ssl.dino as dino_module
    torch.manual_seed(0)
    t = torch.randn(8, 8, dtype=torch.float64)
    other = [t[3:]]                                         # the rows of the other process, step by step
    def all_reduce(x):
        rows = other[0]
        x.add_(torch.cat([rows.float().sum(0), torch.tensor([float(len(rows))])]))
    calls = []
    monkeypatch.setattr(dino_module, 'is_distributed', lambda: True)
    monkeypatch.setattr(dino_module.dist, 'all_reduce', lambda x: (calls.append(x.shape), all_reduce(x)))
    ddp = dino_model('test_resnet', out_dim=8, hidden=16, bottleneck=4)
    ddp.update_center(t[:3], 0.9)
    other[0] = 2 * t[3:]
    ddp.update_center(2 * t[:3], 0.9)
    assert calls == [(9,), (9,)]                             # one collective per step: K sums and the count
    monkeypatch.undo()
    single = dino_model('test_resnet', out_dim=8, hidden=16, bottleneck=4)
    single.update_center(t, 0.9); single.update_center(2 * t, 0.9)
    torch.testing.assert_close(ddp.center, single.center, rtol=1e-6, atol=1e-7)
    local = dino_model('test_resnet', out_dim=8, hidden=16, bottleneck=4)
    local.update_center(t[:3], 0.9); local.update_center(2 * t[:3], 0.9)
    assert not torch.allclose(ddp.center, local.center, atol=1e-3)     # this process's rows alone would differ
