"Heavier checks of fundus_ssl.pseudolabel: mixed batches, the combined S4L loss, a short training run and label propagation."
import math, warnings
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from fastai.optimizer import Adam
from fundus_ssl.core import fundus_data_root
from fundus_ssl.data import train_valid_frame
from fundus_ssl.datasets import read_odir, read_eyepacs, MissingFilesWarning
from fundus_ssl.losses import semihard_triplet_loss
from fundus_ssl.synthetic import write_odir_like, write_eyepacs_like
from fundus_ssl.pseudolabel import (pseudo_labeler, pseudo_labeler_dls, pseudo_labeler_learner, propagate_labels, decision_threshold,
                                    dr_normal_abnormal, last_stride_one, S4LCallback, LabeledLoss)

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('pseudolabel')
    odir = read_odir(write_odir_like(root/'ODIR', n_patients=12, size=64, seed=1))
    eyepacs = read_eyepacs(write_eyepacs_like(root/'EyePACS', n_patients=10, size=64, seed=2))
    return root, odir, eyepacs

@pytest.mark.parametrize('bs,k', [(8, 4), (6, 2), (5, 1)])
def test_mixed_batches(sets, bs, k):
    "Every training batch holds k labeled items (their true targets) and bs - k unlabeled ones (-1)."
    _, odir, eyepacs = sets
    dls = pseudo_labeler_dls(odir, eyepacs, size=32, bs=bs, labeled_per_batch=k, device='cpu')
    frame = train_valid_frame(odir)
    n_train = int((~frame.is_valid).sum())
    assert len(dls.train) == math.ceil(n_train / k)
    labeled_targets = []
    for x, y in dls.train:
        assert x.shape == (bs, 3, 32, 32) and x.dtype == torch.uint8
        assert (y[:k] >= 0).all() and (y[k:] == -1).all()
        labeled_targets += y[:k].tolist()
    # over an epoch the labeled targets are those of the training rows (cycled to fill the last batch)
    truth = [dls.vocab.index(v) for v in frame.label[~frame.is_valid]]
    assert sorted(labeled_targets[:n_train]) == sorted(truth)
    assert all(y.min() >= 0 for _, y in dls.valid)

def test_mixed_batches_multilabel(sets):
    _, odir, eyepacs = sets
    dls = pseudo_labeler_dls(odir, eyepacs, label_cols=list('NDGCAHMO'), size=32, bs=6, labeled_per_batch=3, device='cpu')
    _, y = dls.one_batch()
    assert y.shape == (6, 8) and y.dtype == torch.float32
    assert set(y[:3].unique().tolist()) <= {0., 1.} and (y[3:] == -1).all()

def test_several_labeled_sources(sets):
    "ODIR's rule and EyePACS grades >= 1 in one labeled set; the pool's own grades are ignored."
    _, odir, eyepacs = sets
    labeled = pd.concat([odir, dr_normal_abnormal(eyepacs.iloc[:10])], ignore_index=True)
    dls = pseudo_labeler_dls(labeled, eyepacs.iloc[10:], size=32, bs=4, device='cpu')
    assert dls.vocab == ['abnormal', 'normal']
    assert len(dls.train.dataset) == (~train_valid_frame(labeled).is_valid).sum() + 10

def test_combined_loss_on_hand_built_batch(sets):
    "fastai back-propagates CE over the labeled views only + the semi-hard triplet loss over all views (labeled and unlabeled)."
    root, odir, eyepacs = sets
    dls = pseudo_labeler_dls(odir, eyepacs, size=64, bs=8, device='cpu')
    learn = pseudo_labeler_learner(dls, 'resnet18', seed=0, view_size=48, lr=0., wd=0., path=root)
    cb = next(c for c in learn.cbs if isinstance(c, S4LCallback))
    xb, _ = dls.one_batch()
    y = torch.tensor([1, 0, 1, -1, -1, -1])  # 3 labeled, 3 unlabeled
    learn.create_opt(); learn.model.train(); learn.training = True
    cb.before_fit()
    learn._split((xb[:6], y)); learn('before_batch'); learn._do_one_batch()
    cb.after_fit()
    views, yv = learn.xb[0], learn.yb[0]
    assert views.shape == (24, 3, 48, 48) and yv.tolist() == y.tolist() * 4
    with torch.no_grad():  # lr 0: the step changed nothing (train-mode BN uses the batch statistics again)
        pooled = learn.model.feature_map(views).mean((2, 3))
        logits = learn.model.head(pooled)
    known = yv >= 0
    ce = F.cross_entropy(logits[known], yv[known])
    source = torch.arange(6).repeat(4)
    triplet = semihard_triplet_loss(pooled, source, 0.5)
    assert torch.allclose(learn.loss, ce + triplet, atol=1e-4)
    assert torch.allclose(cb.history['supervised'][-1], ce, atol=1e-4)
    # the triplet term covers the unlabeled views too: not the loss of the labeled views alone
    labeled_only = semihard_triplet_loss(pooled[known], source[known], 0.5)
    assert not torch.allclose(triplet, labeled_only, atol=1e-4)
    # and the supervised term ignores the unlabeled views whatever their logits
    assert torch.allclose(LabeledLoss()(logits, yv), LabeledLoss()(logits[known], yv[known]))

def test_last_stride_one_matches_swcl():
    "SWCL sets layer4[0]'s strided conv and shortcut to stride 1 (no dilation): maps at 1/16."
    m = pseudo_labeler('resnet34')
    block = m.encoder.model.layer4[0]
    assert block.conv1.stride == (1, 1) and block.downsample[0].stride == (1, 1) and block.conv1.dilation == (1, 1)
    assert m.feature_map(torch.rand(1, 3, 96, 96)).shape[-1] == 6
    assert m.encoder.reductions[-1] == 16
    with pytest.raises(ValueError, match="reduce_stride='dilate'"): last_stride_one(pseudo_labeler('vit_tiny_patch16_224', reduce_stride=None, img_size=64).encoder.model)

def test_short_training_lowers_loss_and_propagates(sets, tmp_path):
    "ResNet-18 on 64 px synthetic sets: the loss falls; the CSV has a row per unlabeled image, scores in [0, 1]; reruns give the same file."
    root, odir, eyepacs = sets
    dls = pseudo_labeler_dls(odir, eyepacs, size=64, bs=8, device='cpu')
    torch.manual_seed(0)
    learn = pseudo_labeler_learner(dls, 'resnet18', view_size=48, seed=0, opt_func=Adam, lr=1e-3, wd=0., path=tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    losses = torch.stack(learn.recorder.losses)
    assert losses[-3:].mean() < losses[:3].mean() - 0.1, losses
    scores = propagate_labels(learn, eyepacs)
    csv = tmp_path/'models'/'pseudo_labels.csv'
    assert csv.exists() and len(scores) == len(eyepacs) == len(pd.read_csv(csv))
    assert scores.image.tolist() == eyepacs.image.tolist()
    p = scores[['p_abnormal', 'p_normal']].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    assert set(scores.pseudo_label) <= {'abnormal', 'normal'}
    first = csv.read_bytes()
    propagate_labels(learn, eyepacs)
    assert csv.read_bytes() == first
    # a decision threshold on the abnormal score instead of the most likely class (a short run's scores are off centre)
    cut = propagate_labels(learn, eyepacs, threshold=0.3)
    assert cut.pseudo_label.tolist() == np.where(cut.p_abnormal >= 0.3, 'abnormal', 'normal').tolist() and cut.attrs['threshold'] == 0.3
    assert set(propagate_labels(learn, eyepacs, threshold=1.01).pseudo_label) == {'normal'}
    train_y = dls.train.dataset.targets
    if {0, 1} <= set(train_y.tolist()):
        t = decision_threshold(learn, 'abnormal', 'train')
        assert 0 <= t <= 1 and propagate_labels(learn, eyepacs, threshold='train').attrs['threshold'] == t
    else:
        with pytest.raises(ValueError, match='one class only'): decision_threshold(learn, 'abnormal', 'train')

def test_real_odir_with_an_unlabeled_pool():
    "Real ODIR (labeled) and EyeDiseases4class (unlabeled pool): mixed batches of real images."
    odir_root, pool_root = fundus_data_root('ODIR-5K'), fundus_data_root('EyeDiseases4class_256')
    if odir_root is None or pool_root is None: pytest.skip('FUNDUS_DATA with ODIR-5K and EyeDiseases4class_256 not available')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingFilesWarning)
        odir = read_odir(odir_root).iloc[:40]
    pool = pd.DataFrame({'image': sorted(map(str, (pool_root/'diabetic_retinopathy').glob('*')))[:20]})
    dls = pseudo_labeler_dls(odir, pool, size=64, bs=8, device='cpu')
    x, y = dls.one_batch()
    assert x.shape == (8, 3, 64, 64) and (y[:4] >= 0).all() and (y[4:] == -1).all()
    assert x.float().mean() > 20  # real fundus pixels, cropped to the FOV
