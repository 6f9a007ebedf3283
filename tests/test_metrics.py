"Metrics against scikit-learn, scipy and independent re-derivations; bootstrap behaviour; real-data checks (DRIVE, REFUGE-encoded disc/cup)."
import warnings
import numpy as np
import pytest
import torch
import sklearn.metrics as skm
from scipy.stats import kurtosis
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch.utils.data import TensorDataset
from fundus_ssl.core import fundus_data_root
from fundus_ssl.metrics import *

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


# ---- classification -------------------------------------------------------------------------------------------
@pytest.mark.parametrize('seed', range(5))
def test_kappa_accuracy_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 200)
    p = np.clip(t + rng.integers(-2, 3, 200), 0, 4)
    assert quadratic_kappa(t, p, 5) == pytest.approx(skm.cohen_kappa_score(t, p, weights='quadratic', labels=range(5)))
    assert class_accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))


@pytest.mark.parametrize('seed', range(3))
def test_multilabel_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((150, 8)) < rng.uniform(0.1, 0.6, 8)).astype(int)
    s = np.round(np.clip(y * 0.3 + rng.random((150, 8)), 0, 1), 1)        # rounded: many ties
    assert macro_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s, average='macro'))
    assert mean_average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s, average='macro'))
    for th in (0.3, 0.5, 0.8):
        assert macro_f1(y, s, th) == pytest.approx(skm.f1_score(y, s >= th, average='macro'))
    np.testing.assert_allclose(ap_per_class(y, s), skm.average_precision_score(y, s, average=None))


def test_multiclass_vs_sklearn():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 300)
    p = torch.softmax(torch.tensor(np.eye(5)[g] + rng.normal(size=(300, 5))), 1).numpy()
    assert macro_auc(g, p) == pytest.approx(skm.roc_auc_score(g, p, multi_class='ovr', average='macro'))
    assert macro_f1(g, p) == pytest.approx(skm.f1_score(g, p.argmax(1), average='macro'))
    for k in (1, 2, 3):
        assert referable_auc(g, p, k) == pytest.approx(skm.roc_auc_score(g >= k, p[:, k:].sum(1)))
    assert referable_auc(torch.tensor(g), torch.tensor(p)) == pytest.approx(referable_auc(g, p))   # tensors in


def test_single_class_policies():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[.9, .1], [.2, .3], [.6, .2]])
    with pytest.warns(SingleClassWarning, match=r'column\(s\) \[1\]'):
        assert macro_auc(y, s) == 1.0
    assert np.isnan(mean_average_precision(y, s, single_class='nan'))
    with pytest.raises(ValueError, match='single class'): macro_f1(y, s, single_class='raise')
    with pytest.raises(ValueError, match='expected one of'): macro_auc(y, s, single_class='ignore')
    with pytest.warns(SingleClassWarning): assert np.isnan(macro_auc(y[:, 1:], s[:, 1:]))   # nothing left to average
    np.testing.assert_array_equal(np.isnan(auc_per_class(y, s)), [False, True])


def test_sensitivity_at_specificity():
    rng = np.random.default_rng(1)
    y = rng.random(250) < 0.2
    s = rng.normal(size=250) + y                                           # continuous: no ties
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    for spec in (0.5, 0.85, 0.9, 0.95):
        step = tpr[fpr <= 1 - spec + 1e-12].max()
        assert sensitivity_at_specificity(y, s, spec, interpolate=False) == pytest.approx(step)
        # without ties the ROC path is a staircase: reading it at a specificity gives the best threshold's value
        assert sensitivity_at_specificity(y, s, spec) == pytest.approx(step)
    fp, tp, _ = roc_points(y, s)
    assert np.trapezoid(tp, fp) == pytest.approx(binary_auc(y, s))
    assert np.isnan(sensitivity_at_specificity(np.zeros(5), np.arange(5)))
    with pytest.raises(ValueError, match=r'specificity=85'): sensitivity_at_specificity(y, s, 85)


def test_joint_accuracy():
    rng = np.random.default_rng(0)
    dr, dme = rng.integers(0, 5, 100), rng.integers(0, 3, 100)
    dr_p, dme_p = np.where(rng.random(100) < 0.8, dr, 0), np.where(rng.random(100) < 0.8, dme, 0)
    expected = np.mean((dr == dr_p) & (dme == dme_p))
    assert joint_accuracy((dr, dme), (np.eye(5)[dr_p], np.eye(3)[dme_p])) == pytest.approx(expected)
    assert joint_accuracy(np.stack([dr, dme], 1), [dr_p, dme_p]) == pytest.approx(expected)


# ---- bootstrap ------------------------------------------------------------------------------------------------
def test_bootstrap_stratified_keeps_class_counts():
    strata = np.r_[[0] * 7, [1] * 3, [2] * 5]
    idx = bootstrap_indices(15, 200, seed=3, strata=strata)
    assert idx.shape == (200, 15)
    for s, n in [(0, 7), (1, 3), (2, 5)]: assert ((strata[idx] == s).sum(1) == n).all()
    np.testing.assert_array_equal(idx, bootstrap_indices(15, 200, seed=3, strata=strata))


def test_bootstrap_levels_and_skips():
    rng = np.random.default_rng(0)
    y, s = rng.random(80) < 0.3, rng.random(80)
    ci95, ci80 = bootstrap_ci(binary_auc, y, s, n=400), bootstrap_ci(binary_auc, y, s, n=400, level=0.8)
    assert ci80.low > ci95.low and ci80.high < ci95.high
    assert ci95.estimate == pytest.approx(skm.roc_auc_score(y, s))
    def refuses(t, p): raise ValueError('undefined here')
    with pytest.raises(ValueError, match='undefined here'): bootstrap_ci(refuses, y, s, n=10)   # the estimate is not hidden
    flaky = lambda t, p: binary_auc(t, p) if t.sum() >= 25 else float('nan')
    ci = bootstrap_ci(flaky, y, s, n=300)
    assert 0 < ci.n_skipped < 300 and len(ci.samples) == 300 - ci.n_skipped
    grouped = bootstrap_ci(binary_auc, y, s, n=100, stratified=np.arange(80) % 4)      # any strata
    assert grouped.n == 100 and np.isfinite(grouped.low)
    with pytest.raises(ValueError, match='rows'): bootstrap_ci(binary_auc, y, s[:10], n=10)


def test_bootstrap_all_undefined():
    ci = bootstrap_ci(lambda t, p: float('nan') if len(t) else 0.0, np.r_[0, 1], np.r_[0, 1], n=20)
    assert ci.n_skipped == 20 and np.isnan(ci.low) and np.isnan(ci.high)


# ---- segmentation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('device', DEVICES)
def test_binary_seg_vs_sklearn(device):
    rng = np.random.default_rng(0)
    truth = rng.random((3, 40, 50)) < 0.2
    prob = np.clip(truth * 0.4 + rng.random((3, 40, 50)) * 0.7, 0, 1)
    fov = np.zeros((40, 50), bool); fov[5:35, 8:45] = True
    out = vessel_metrics(torch.tensor(prob, device=device), torch.tensor(truth, device=device), torch.tensor(fov, device=device), threshold=0.5)
    for i in range(3):
        t, p = truth[i][fov], prob[i][fov]
        tn, fp, fn, tp = skm.confusion_matrix(t, p >= 0.5).ravel()
        assert out['dice'][i] == pytest.approx(skm.f1_score(t, p >= 0.5))
        assert out['sensitivity'][i] == pytest.approx(skm.recall_score(t, p >= 0.5))
        assert out['specificity'][i] == pytest.approx(tn / (tn + fp))
        assert out['accuracy'][i] == pytest.approx(skm.accuracy_score(t, p >= 0.5))
        assert out['auc'][i] == pytest.approx(skm.roc_auc_score(t, p))
        one = vessel_metrics(prob[i], truth[i], fov)                       # one image: floats, same values
        assert isinstance(one['dice'], float) and one['auc'] == pytest.approx(out['auc'][i])


def test_empty_conventions():
    z = np.zeros((4, 4), bool)
    fp = z.copy(); fp[0, 0] = True
    assert binary_seg_metrics(z, z) == dict(dice=1.0, sensitivity=1.0, specificity=1.0, accuracy=1.0)
    m = binary_seg_metrics(z, z, empty=float('nan'))
    assert np.isnan(m['dice']) and np.isnan(m['sensitivity']) and m['accuracy'] == 1.0
    assert dice_score(fp, z, empty=float('nan')) == 0.0 and dice_score(fp, z) == 0.0
    assert dice_score(z, fp) == 0.0
    assert np.isnan(vessel_metrics(z.astype(float), z)['auc'])


def test_disc_cup_vs_refuge_rule():
    "REFUGE's evaluation: disc = label < 255 (rim + cup), cup = label 0, vertical diameter = max over columns of the pixel count."
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:120, :120]
    def labels(cy, cx, r_disc, r_cup, tilt):
        u, v = (x - cx) + tilt * (y - cy), (y - cy)
        d = (u / r_disc[1]) ** 2 + (v / r_disc[0]) ** 2 <= 1
        c = (u / r_cup[1]) ** 2 + (v / r_cup[0]) ** 2 <= 1
        return d.astype(np.uint8) + (c & d)
    for _ in range(5):
        t = labels(60, 60, rng.uniform(25, 40, 2), rng.uniform(8, 20, 2), rng.uniform(-0.5, 0.5))
        p = labels(60 + rng.integers(-4, 5), 60, rng.uniform(25, 40, 2), rng.uniform(8, 20, 2), rng.uniform(-0.5, 0.5))
        refuge = lambda lab: (lab == 2).sum(0).max() / (lab >= 1).sum(0).max()
        m = disc_cup_metrics(p, t)
        assert m['disc_dice'] == pytest.approx(skm.f1_score((t >= 1).ravel(), (p >= 1).ravel()))
        assert m['cup_dice'] == pytest.approx(skm.f1_score((t == 2).ravel(), (p == 2).ravel()))
        assert m['vcdr_error'] == pytest.approx(abs(refuge(p) - refuge(t)))
        span = lambda mask: np.ptp(np.flatnonzero(mask.any(1))) + 1
        assert vertical_cdr(t, 'span') == pytest.approx(span(t == 2) / span(t >= 1))
    batch = disc_cup_metrics(np.stack([p, t]), np.stack([t, t]))
    assert batch['vcdr_error'][1] == 0 and batch['disc_dice'][1] == 1.0


def test_drive_second_observer():
    "DRIVE test set, second observer vs first inside the FOV: the published 0.9473 / 0.7760 / 0.9725."
    root = fundus_data_root('DRIVE')
    if root is None: pytest.skip('DRIVE not available (set FUNDUS_DATA)')
    from fundus_ssl.datasets import read_drive
    from fundus_ssl.io import read_mask
    test = read_drive(root).query("split == 'test'")
    m = [binary_seg_metrics(read_mask(r.mask2), read_mask(r.mask), read_mask(r.fov)) for r in test.itertuples()]
    mean = {k: np.mean([d[k] for d in m]) for k in m[0]}
    assert mean['accuracy'] == pytest.approx(0.9473, abs=0.002)
    assert mean['sensitivity'] == pytest.approx(0.7760, abs=0.002)
    assert mean['specificity'] == pytest.approx(0.9725, abs=0.002)
    outside = [binary_seg_metrics(read_mask(r.mask2), read_mask(r.mask))['specificity'] for r in test.itertuples()]
    assert np.mean(outside) > mean['specificity']      # counting the black surround inflates specificity


def test_real_disc_cup_masks():
    root = fundus_data_root('ODOC_multidomain')
    if root is None: pytest.skip('ODOC_multidomain not available (set FUNDUS_DATA)')
    from fundus_ssl.datasets import read_odoc_multidomain
    from fundus_ssl.io import read_mask
    for path in read_odoc_multidomain(root)['mask']:
        lab = read_mask(path, 'refuge')
        m = disc_cup_metrics(lab, lab)
        assert (m['disc_dice'], m['cup_dice'], m['vcdr_error']) == (1.0, 1.0, 0.0)
        assert 0.2 < m['vcdr'] < 0.95, path
        assert m['vcdr'] == pytest.approx((lab == 2).sum(0).max() / (lab >= 1).sum(0).max())


# ---- representations ------------------------------------------------------------------------------------------
def feature_space_cka(x, y):
    "Kornblith et al.'s feature-space form: ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F)."
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))

def unbiased_centred(g):
    "Gram matrix centred so that its inner products give the unbiased HSIC (up to a common factor)."
    n = len(g)
    g = g.copy(); np.fill_diagonal(g, 0)
    means = g.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    g = g - means[:, None] - means[None]
    np.fill_diagonal(g, 0)
    return g

def unbiased_cka_ref(x, y):
    k, l = unbiased_centred(x @ x.T), unbiased_centred(y @ y.T)
    return (k * l).sum() / (np.linalg.norm(k) * np.linalg.norm(l))


def test_cka_references():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 12))
    y = x @ rng.normal(size=(12, 20)) + rng.normal(size=(30, 20))
    assert linear_cka(x, y) == pytest.approx(feature_space_cka(x, y))
    assert linear_cka(x, y, unbiased=True) == pytest.approx(unbiased_cka_ref(x, y))
    a, b = [x, y, x ** 2], [y, rng.normal(size=(30, 5, 2, 2))]          # a 4-d activation is flattened
    m = cka_matrix(a, b)
    assert m.shape == (3, 2)
    np.testing.assert_allclose(m, cka_matrix(b, a).T)
    assert m[0, 0] == pytest.approx(feature_space_cka(x, y))


def test_minibatch_cka():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16))
    feats = [x, np.tanh(x @ rng.normal(size=(16, 16))), rng.normal(size=(200, 8))]
    mb = MinibatchCKA()
    for i in range(0, 200, 25): mb.update([f[i:i + 25] for f in feats])
    v = mb.value()
    np.testing.assert_allclose(np.diag(v), 1.0)
    assert v[0, 1] > 0.5 and abs(v[0, 2]) < 0.1                        # related vs independent
    with pytest.raises(ValueError, match='no batch'): MinibatchCKA().value()
    with pytest.raises(ValueError, match='at least 4'): MinibatchCKA().update([x[:3]])


@pytest.mark.parametrize('shape', [(300, 40), (120, 500)])
def test_pca_eigenvalues_vs_sklearn(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) @ np.diag(rng.uniform(0.1, 3, shape[1])) + rng.normal(size=(shape[0], 1))
    x[:, 3] = 2.0                                                      # a constant feature
    k = min(30, shape[1])
    ref = PCA(k).fit(StandardScaler().fit_transform(x)).explained_variance_
    np.testing.assert_allclose(pca_eigenvalues(x, k), ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pca_eigenvalues(torch.tensor(x).reshape(shape[0], -1, 2), k), ref, rtol=1e-6, atol=1e-9)


def test_kurtosis_and_condition_numbers():
    rng = np.random.default_rng(0)
    a = rng.laplace(size=(5000, 20))
    assert activation_kurtosis(a) == pytest.approx(kurtosis(a.ravel()))
    assert activation_kurtosis(a) == pytest.approx(3, abs=0.4)          # Laplace: excess kurtosis 3
    ev = np.sort(rng.uniform(0.1, 10, 100))[::-1]
    cn = condition_numbers(ev, [(99, 50), (99, 10), (99.9, 90)])
    assert cn['99/50'] == pytest.approx(np.percentile(ev, 99) / np.percentile(ev, 50))
    assert cn['99.9/90'] == pytest.approx(np.percentile(ev, 99.9) / np.percentile(ev, 90))
    stats = layer_statistics({'a': a, 'b': rng.normal(size=(500, 20))}, n_components=15)
    assert list(stats.columns) == ['cn_99/50', 'cn_99/10', 'kurtosis'] and list(stats.index) == ['a', 'b']


# ---- fastai metrics -------------------------------------------------------------------------------------------
def learner(model, x, y, metrics, loss, bs=7):
    dl = DataLoader(TensorDataset(x, y), bs=bs)
    return Learner(DataLoaders(dl, dl), model, loss_func=loss, metrics=metrics)


def test_fastai_multilabel_and_binary_dice():
    torch.manual_seed(0)
    x, y = torch.randn(60, 6), (torch.rand(60, 4) < 0.4).float()
    learn = learner(torch.nn.Linear(6, 4), x, y, [MacroAUC(multilabel=True)], torch.nn.BCEWithLogitsLoss())
    with learn.no_logging(): _, auc = learn.validate()
    assert auc == pytest.approx(skm.roc_auc_score(y.numpy(), torch.sigmoid(learn.model(x)).detach().numpy(), average='macro'))

    xs, ys = torch.randn(10, 2, 12, 12), (torch.rand(10, 12, 12) < 0.3).long()
    fov_fn = lambda xb: xb[:, 1] > -0.5                                  # a FOV from the input batch
    seg = torch.nn.Conv2d(2, 1, 3, padding=1)
    loss = lambda p, t: torch.nn.functional.binary_cross_entropy_with_logits(p[:, 0], t.float())
    learn = learner(seg, xs, ys, [DiceMetric(), DiceMetric(fov_fn=fov_fn, name='dice_fov')], loss, bs=4)
    with learn.no_logging(): _, d, d_fov = learn.validate()
    pred = (seg(xs)[:, 0] > 0).detach()
    assert d == pytest.approx(dice_score(pred, ys.bool()).mean())
    assert d_fov == pytest.approx(dice_score(pred, ys.bool(), fov_fn(xs)).mean())
    assert d != pytest.approx(d_fov)


def test_dice_metric_skips_nan_images():
    class FakeLearn:                                                    # what DiceMetric reads from a Learner
        def __init__(self, pred, y): self.pred, self.y, self.x = pred, y, None
        def to_detach(self, t, cpu=True, gather=True): return t.detach()
    logits = torch.zeros(2, 2, 3, 3); logits[0, 1, 0, 0] = 1              # image 0 predicts one pixel, image 1 nothing
    y = torch.zeros(2, 3, 3, dtype=torch.long); y[0, 0, 0] = 1
    m = DiceMetric(empty=float('nan')); m.reset(); m.accumulate(FakeLearn(logits, y))
    assert m.value == 1.0 and int(m.count) == 1                         # image 1 (both empty) left out
    m = DiceMetric(); m.reset(); m.accumulate(FakeLearn(logits, y))
    assert m.value == 1.0 and int(m.count) == 2
    assert DiceMetric().name == 'dice' and QuadraticKappa().name == 'kappa'


@pytest.mark.parametrize('device', DEVICES)
def test_fastai_metrics_stay_on_device(device):
    "Predictions, targets and Dice sums are kept on the model's device until `value` (no per-batch transfer)."
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 5, (40,))
    dl = DataLoader(TensorDataset(x, y), bs=8, device=device)
    kappa, rauc = QuadraticKappa(), ReferableAUC(min_grade=3)
    learn = Learner(DataLoaders(dl, dl, device=device), torch.nn.Linear(6, 5), loss_func=torch.nn.CrossEntropyLoss(), metrics=[kappa, rauc])
    with learn.no_logging(): _, k, r = learn.validate()
    assert {t.device.type for t in kappa.preds + kappa.targs + rauc.preds} == {torch.device(device).type}
    p = torch.softmax(learn.model(x.to(device)), 1).detach().cpu()
    assert k == pytest.approx(quadratic_kappa(y, p)) and r == pytest.approx(referable_auc(y, p, 3))

    xs, ys = torch.randn(9, 3, 8, 8), torch.randint(0, 3, (9, 8, 8))
    dl = DataLoader(TensorDataset(xs, ys), bs=4, device=device)
    dice = DiceMetric((1, 2))
    learn = Learner(DataLoaders(dl, dl, device=device), torch.nn.Conv2d(3, 3, 1), loss_func=torch.nn.CrossEntropyLoss(), metrics=[dice])
    with learn.no_logging(): _, d = learn.validate()
    assert dice.total.device.type == torch.device(device).type
    lab = learn.model(xs.to(device)).argmax(1).cpu()
    assert d == pytest.approx(dice_score(lab >= 1, ys >= 1).mean())
