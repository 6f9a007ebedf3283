"SWCL on synthetic patch datasets: every label scheme trains, multi-label patch CSVs, exact resume with SaveState, DDP equals one process."
import math
import pytest
import numpy as np, pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastcore.basics import noop
from fundus_ssl.synthetic import write_odir_like, write_eyepacs_like
from fundus_ssl.datasets import read_odir, read_eyepacs
from fundus_ssl.pseudolabel import pseudo_labeler
from fundus_ssl.patches import build_patch_dataset, read_patch_csv
from fundus_ssl.checkpoint import SaveState, checkpoints
from fundus_ssl.swcl import SWCL, swcl_dls, swcl_learner, patch_labels, positive_masks, scheme_labels
from fundus_ssl.losses import supcon_loss

LIGHT = dict(p_jitter=0., p_gray=0., p_blur=0., p_solarize=0.)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    "24 ODIR-like (labeled) and 24 EyePACS-like images at 64 px."
    root = tmp_path_factory.mktemp('data')
    odir = read_odir(write_odir_like(root/'ODIR', n_patients=12, size=64, seed=1))
    eyepacs = read_eyepacs(write_eyepacs_like(root/'EyePACS', n_patients=12, size=64, seed=2))
    return pd.concat([odir, eyepacs], ignore_index=True)

@pytest.fixture(scope='module')
def patch_dir(images, tmp_path_factory):
    "Their patch dataset (32 px patches, not cached: cut on the fly), scored by an untrained pseudo-labeler."
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp('patches')
    build_patch_dataset(images, pseudo_labeler('resnet10t'), out, size=64, patch_size=32)
    return out

@pytest.fixture(scope='module')
def multilabel_dir(images, tmp_path_factory):
    "The same images through a multi-label (N, D, G) pseudo-labeler: label_<X> columns per patch."
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp('ml_patches')
    build_patch_dataset(images, pseudo_labeler('resnet10t', vocab=list('NDG'), multilabel=True), out, size=64, patch_size=32, normal='N')
    return out


def quiet(learn):
    learn.remove_cb(ProgressCallback); learn.logger = noop
    return learn

class RawLosses(Callback):
    def before_fit(self): self.values = []
    def after_batch(self):
        if self.training: self.values.append(self.learn.loss.item())

class StopAfter(Callback):
    "Stop the fit after `n` epochs, as an interruption would."
    order = SaveState.order + 1
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise CancelFitException


# ---- labels -----------------------------------------------------------------------------------------------------
def test_patch_labels_code_patients_per_dataset_and_rethreshold(patch_dir):
    rows = read_patch_csv(patch_dir/'patches.csv')
    labels = patch_labels(rows)
    n_patients = rows.groupby(['dataset', 'patient']).ngroups
    assert labels['patient'].max().item() + 1 == n_patients            # ODIR's patient 3 is not EyePACS's patient 3
    assert n_patients > rows['patient'].nunique()
    assert torch.equal(labels['abnormality'], torch.tensor(rows['abnormal'].to_numpy()))
    assert torch.equal(patch_labels(rows, threshold=0.)['abnormality'], torch.ones(len(rows), dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions \['top'\] are not among"):
        patch_labels(rows.assign(position='top'))


def test_multilabel_csv_gives_diseases(multilabel_dir):
    dls = swcl_dls(multilabel_dir, bs=16, device='cpu')
    _, y = dls.one_batch()
    assert set(y) == {'patient', 'position', 'abnormality', 'diseases'} and y['diseases'].shape == (16, 3)
    w = positive_masks(y, 'diseases')[0]
    same = (y['diseases'][:, None] == y['diseases'][None]).all(-1).float()
    assert torch.equal(w, same)


# ---- training under every scheme --------------------------------------------------------------------------------
SCHEMES = [('all', None), ('position', None), ('abnormality', None), ('patient', None), ('position+abnormality', None),
           ('patient+position', None), ('all', 'jaccard'), ('all', 'per_label')]

@pytest.mark.parametrize('scheme,multilabel', SCHEMES, ids=[f'{s}-{m}' for s, m in SCHEMES])
def test_every_scheme_gives_the_loss_of_its_labels(patch_dir, scheme, multilabel):
    "A training step under each scheme: the loss is supcon_loss of the embeddings with the scheme's labels, finite."
    torch.manual_seed(0)
    dls = swcl_dls(patch_dir, bs=16, device='cpu')
    learn = quiet(swcl_learner(dls, 'test_resnet', label_scheme=scheme, multilabel=multilabel, **LIGHT))
    class Check(Callback):
        order = 60
        def after_loss(self):
            z = self.learn.pred['z']
            expected = supcon_loss(torch.stack([z[:16], z[16:]], 1), scheme_labels(self.learn.yb[1], scheme, multilabel),
                                   temperature=0.1, multilabel=multilabel or 'jaccard')
            torch.testing.assert_close(self.learn.loss, expected)
            self.done = True
            raise CancelFitException
    check = Check()
    learn.fit(1, 1e-3, cbs=check)
    assert check.done


def test_multilabel_scheme_with_diseases_lowers_the_loss(multilabel_dir):
    torch.manual_seed(0)
    dls = swcl_dls(multilabel_dir, bs=16, device='cpu')
    raw = RawLosses()
    learn = quiet(swcl_learner(dls, 'test_resnet', label_scheme='position+abnormality+diseases', multilabel='jaccard', cbs=raw, **LIGHT))
    learn.fit_one_cycle(2, 3e-3)
    assert all(math.isfinite(v) for v in raw.values)
    assert np.mean(raw.values[-3:]) < np.mean(raw.values[:3]) - 0.2, raw.values


def test_summary_validate_and_show(patch_dir):
    torch.manual_seed(0)
    learn = quiet(swcl_learner(swcl_dls(patch_dir, bs=16, device='cpu'), 'test_resnet', **LIGHT))
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.summary()
    loss = learn.validate()[0]
    assert math.isfinite(loss)
    learn.swcl.show(n=2)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, before[k]), k


# ---- resume -----------------------------------------------------------------------------------------------------
def _learner(patch_dir, seed=0):
    torch.manual_seed(seed)
    dls = swcl_dls(patch_dir, bs=16, device='cpu')
    dls.train.rng.seed(seed)
    return quiet(swcl_learner(dls, 'test_resnet', **LIGHT))

def test_interrupted_run_resumes_exactly(patch_dir, tmp_path):
    "A run stopped after 1 of 2 epochs and resumed by a new learner ends with the uninterrupted run's weights."
    fit = lambda learn, cbs=(): learn.fit_one_cycle(2, 3e-3, cbs=list(cbs))
    reference = _learner(patch_dir); fit(reference)
    fit(_learner(patch_dir), [SaveState(tmp_path/'run'), StopAfter(1)])
    assert list(checkpoints(tmp_path/'run')) == [1]
    resumed = _learner(patch_dir, seed=1)             # other initial weights and generators: all restored from the checkpoint
    fit(resumed, [SaveState(tmp_path/'run', resume=True)])
    for k, v in reference.model.state_dict().items(): assert torch.equal(resumed.model.state_dict()[k], v), k


# ---- DDP --------------------------------------------------------------------------------------------------------
def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(n, 10, generator=g), torch.randn(n, 10, generator=g)
    labels = dict(patient=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), position=torch.tensor([0, 0, 1, 1, 0, 4, 4, 4]),
                  abnormality=torch.tensor([0, 0, 1, 0, 1, 1, 0, 0]))
    return x1, x2, labels

def _loss_and_grad(x1, x2, labels, scheme, multilabel, world=1):
    torch.manual_seed(0)
    head = torch.nn.Linear(10, 6)
    loss = SWCL(label_scheme=scheme, multilabel=multilabel).ssl_loss(dict(z=head(torch.cat([x1, x2]))), {}, labels)
    loss.backward()
    grad = head.weight.grad.clone()
    if world > 1: dist.all_reduce(grad); grad /= world        # what DDP does with the parameters' gradients
    return loss.detach(), grad

DDP_SCHEMES = [('all', None), ('position+abnormality', 'per_label')]

def _ddp_worker(rank, world, init_file, out):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    x1, x2, labels = _batch()
    part = slice(rank * 4, (rank + 1) * 4)
    got = [_loss_and_grad(x1[part], x2[part], {k: v[part] for k, v in labels.items()}, s, m, world) for s, m in DDP_SCHEMES]
    if rank == 0: torch.save(got, out)
    dist.barrier()
    dist.destroy_process_group()

def test_ddp_loss_and_gradients_equal_one_process(tmp_path):
    "Two processes with half the batch each: the loss of the global batch, and DDP's averaged gradient equals one process's."
    out = tmp_path/'ddp.pth'
    # spawned, not forked: a fork after an earlier test ran torch.compile's backward would refuse to run autograd
    mp.spawn(_ddp_worker, args=(2, str(tmp_path/'init'), str(out)), nprocs=2, join=True)
    for (loss, grad), (s, m) in zip(torch.load(out, weights_only=True), DDP_SCHEMES):
        ref_loss, ref_grad = _loss_and_grad(*_batch(), s, m)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
