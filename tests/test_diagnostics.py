"Diagnostics against float64 hand computations, brute-force kNN and sklearn; the monitors on a tiny Learner."
import math
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from torch.utils.data import TensorDataset
from fundus_ssl.synthetic import make_fundus
from fundus_ssl.data import classification_dls, fundus_augs, IMAGENET_STATS
from fundus_ssl.models import create_encoder
from fundus_ssl.augment import TwoViewAug
from fundus_ssl.diagnostics import (embedding_spectrum, effective_rank, alignment, uniformity, weighted_knn, embed,
                                    embed_pairs, eval_mode, unaugmented_dl, Monitor, EmbeddingMonitor, KNNMonitor)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])

def gen(seed): return torch.Generator().manual_seed(seed)


# ---- spectrum and effective rank ------------------------------------------------------------------------------
@pytest.mark.parametrize('d', [8, 64])
@pytest.mark.parametrize('normalize', [True, False])
def test_effective_rank_of_isotropic_gaussian_is_close_to_d(d, normalize):
    z = torch.randn(20000, d, generator=gen(d))
    assert abs(effective_rank(embedding_spectrum(z, normalize)) - d) < 0.03 * d


@pytest.mark.parametrize('r', [1, 3])
def test_effective_rank_of_rank_r_data(r):
    "Rank-1 data has effective rank exactly 1; rank-r data with equal variances exactly r (noise counts as 0)."
    basis = torch.linalg.qr(torch.randn(32, r, generator=gen(0), dtype=torch.float64))[0].T   # r orthonormal rows
    coef = torch.linalg.qr(torch.randn(5000, r, generator=gen(1), dtype=torch.float64))[0]   # orthonormal columns
    coef = coef - coef.mean(0)
    coef = torch.linalg.qr(coef)[0]             # centred and orthonormal: equal variance along each basis vector
    z = (coef @ basis).float()                  # float32 rounding leaves tiny noise in the other 32-r directions
    # an offset is fine without normalisation; normalising rows keeps them in the subspace only without one
    for emb, normalize in ((z + 0.5, False), (z, False), (z, True)):
        s = embedding_spectrum(emb, normalize)
        assert (s > 0).sum() == r                 # the rounding noise is removed
        assert effective_rank(s) == pytest.approx(r, abs=1e-12 if not normalize else 0.3)
    if r == 1: assert effective_rank(embedding_spectrum(z + 0.5, normalize=False)) == 1.0


def test_effective_rank_definition():
    s = torch.tensor([5., 3., 1., 1., 0.])
    p = s[:4] / s.sum()
    assert effective_rank(s) == pytest.approx(math.exp(-sum(float(q) * math.log(q) for q in p)))
    assert effective_rank(torch.zeros(4)) == 0.
    with pytest.raises(ValueError, match='>= 0'): effective_rank(torch.tensor([1., -1.]))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_spectrum_of_a_known_covariance(dtype):
    "Embeddings whose sample covariance is exactly Q diag(lam) Q^T give the spectrum lam."
    lam = torch.tensor([9., 4., 2., 1., .3, .1, .01, 0., 0., 0.], dtype=torch.float64)
    x = torch.randn(300, 10, generator=gen(2), dtype=torch.float64)
    white = torch.linalg.qr(x - x.mean(0))[0] * math.sqrt(len(x) - 1)
    q = torch.linalg.qr(torch.randn(10, 10, generator=gen(3), dtype=torch.float64))[0]
    z = (white * lam.sqrt() @ q.T - 2.0).to(dtype)
    s = embedding_spectrum(z, normalize=False)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, lam, atol=1e-10 if dtype == torch.float64 else 1e-5, rtol=1e-5)
    # numpy's covariance of the L2-normalised rows, as Jing et al.'s code computes it
    zn = (z / z.norm(dim=1, keepdim=True)).double().numpy()
    ref = np.linalg.svd(np.cov(zn.T), compute_uv=False)
    torch.testing.assert_close(embedding_spectrum(z), torch.from_numpy(ref), atol=1e-6, rtol=1e-5)


# ---- alignment and uniformity ---------------------------------------------------------------------------------
def unit(v): n = math.sqrt(sum(a * a for a in v)); return [a / n for a in v]
def sqdist(a, b): return sum((u - v) ** 2 for u, v in zip(a, b))

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('alpha,t', [(2., 2.), (1., 0.5)])
def test_alignment_uniformity_against_float64_loops(device, alpha, t):
    x = torch.randn(40, 6, generator=gen(4))
    y = x + 0.5 * torch.randn(40, 6, generator=gen(5))
    xs, ys = [unit(r) for r in x.double().tolist()], [unit(r) for r in y.double().tolist()]
    align = sum(sqdist(a, b) ** (alpha / 2) for a, b in zip(xs, ys)) / len(xs)
    pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    unif = math.log(sum(math.exp(-t * sqdist(xs[i], xs[j])) for i, j in pairs) / len(pairs))
    assert alignment(x.to(device), y.to(device), alpha).item() == pytest.approx(align, rel=1e-5)
    assert uniformity(x.to(device), t).item() == pytest.approx(unif, rel=1e-5)
    assert uniformity(x.double(), t).item() == pytest.approx(unif, rel=1e-12)
    raw = x.double().tolist()
    unif_raw = math.log(sum(math.exp(-t * sqdist(raw[i], raw[j])) for i, j in pairs) / len(pairs))
    assert uniformity(x.double(), t, normalize=False).item() == pytest.approx(unif_raw, rel=1e-10)


def test_uniformity_stays_finite_for_well_spread_features():
    "The naive log(mean(exp)) underflows to -inf for large t; the logsumexp form does not."
    x = torch.eye(8)
    assert uniformity(x, t=200.).item() == pytest.approx(-400., rel=1e-6)


# ---- weighted kNN ---------------------------------------------------------------------------------------------
def knn_loop(bank, labels, queries, k, T, C):
    out = []
    for q in queries.double().tolist():
        sims = sorted(((sum(a * b for a, b in zip(unit(q), unit(v))), int(l)) for v, l in zip(bank.double().tolist(), labels)),
                      key=lambda s: -s[0])[:k]
        votes = [sum(math.exp(s / T) for s, l in sims if l == c) for c in range(C)]
        out.append([v / sum(votes) for v in votes])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('k,T,chunk', [(20, 0.07, 1024), (5, 0.5, 7), (1, 0.07, 3)])
def test_weighted_knn_against_brute_force(device, k, T, chunk):
    bank, labels = torch.randn(80, 12, generator=gen(6)), torch.randint(0, 4, (80,), generator=gen(7))
    queries, qlabels = torch.randn(25, 12, generator=gen(8)), torch.randint(0, 4, (25,), generator=gen(9))
    res = weighted_knn(bank.to(device), labels.to(device), queries.to(device), k, T, test_labels=qlabels, chunk=chunk)
    ref = knn_loop(bank, labels, queries, k, T, 4)
    torch.testing.assert_close(res.probs.cpu().double(), ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(res.preds.cpu(), ref.argmax(1))
    assert res.accuracy == pytest.approx((ref.argmax(1) == qlabels).double().mean().item())


def test_weighted_knn_matches_sklearn_on_an_easy_case():
    from sklearn.neighbors import KNeighborsClassifier
    centres = torch.randn(4, 10, generator=gen(10)) * 2
    labels, qlabels = torch.arange(200) % 4, torch.arange(60) % 4
    bank = centres[labels] + torch.randn(200, 10, generator=gen(11))
    queries = centres[qlabels] + torch.randn(60, 10, generator=gen(12))
    k, T = 20, 0.07
    sk = KNeighborsClassifier(n_neighbors=k, metric='cosine', algorithm='brute',
                              weights=lambda dist: np.exp((1 - dist) / T))  # cosine distance = 1 - similarity
    sk.fit(bank.double().numpy(), labels.numpy())
    res = weighted_knn(bank, labels, queries, k, T, test_labels=qlabels)
    assert np.array_equal(res.preds.numpy(), sk.predict(queries.double().numpy()))
    np.testing.assert_allclose(res.probs.numpy(), sk.predict_proba(queries.double().numpy()), atol=1e-5)
    assert res.accuracy == pytest.approx(sk.score(queries.double().numpy(), qlabels.numpy()))
    assert res.accuracy > 0.9


def test_weighted_knn_bank_smaller_than_k_warns():
    with pytest.warns(UserWarning, match='all of them vote'):
        res = weighted_knn(torch.eye(3), torch.tensor([0, 1, 1]), torch.eye(3), k=20)
    assert res.accuracy is None and res.probs.shape == (3, 2)


# ---- feature extraction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('device', DEVICES)
def test_embed_pools_maps_and_keeps_state(device):
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).to(device).train()
    x, y = torch.randn(10, 3, 8, 8, generator=gen(13)), torch.arange(10)
    dl = DataLoaders.from_dsets(TensorDataset(x, y), TensorDataset(x, y), bs=3, device=torch.device('cpu')).valid
    before = {k: v.clone() for k, v in body.state_dict().items()}
    feats, labels = embed(body, dl, progress=False)
    assert feats.device.type == device and type(feats) is torch.Tensor
    with torch.no_grad(): ref = body.eval()(x.to(device)).mean((2, 3))
    torch.testing.assert_close(feats, ref)
    assert torch.equal(labels.cpu(), y)
    body.train()
    embed(body, dl, progress=False)
    assert body.training and body[1].training
    assert all(torch.equal(v, before[k]) for k, v in body.state_dict().items())


def test_eval_mode_restores_each_module():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2))).train()
    m[2].eval()
    modes = [x.training for x in m.modules()]
    with eval_mode(m): assert not any(x.training for x in m.modules())
    assert [x.training for x in m.modules()] == modes


# ---- the callbacks on a tiny Learner --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def frame():
    eyes = ['left', 'right']
    return pd.DataFrame([dict(image=make_fundus(i, size=64, eye=eyes[i % 2], dr_grade=0)['image'], eye=eyes[i % 2],
                              split='valid' if i >= 24 else 'train') for i in range(32)])

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = create_encoder('resnet18')
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 2))  # dropout: training draws from torch's RNG
    def forward(self, x): return self.head(self.encoder(x))

def tiny_learner(frame, cbs=(), seed=0):
    "Deterministic augmentation (albumentations has its own RNG): the run depends only on the seeded global RNGs."
    torch.manual_seed(seed); np.random.seed(seed); __import__('random').seed(seed)
    dls = classification_dls(frame, 'eye', size=64, bs=8, augs=(fundus_augs(64, train=False),) * 2)
    return Learner(dls, Classifier(), loss_func=nn.CrossEntropyLoss(), cbs=list(cbs))

def views_of(stats=IMAGENET_STATS, seed=None):
    "Views drawn from torch's global generator (seed None): the monitor must not let that leak into training."
    aug = TwoViewAug('mocov2', size=64, seed=seed)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return lambda x: aug((x * std.to(x) + mean.to(x)).clamp(0, 1))

def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}


def test_monitors_log_one_value_per_epoch(frame):
    learn = tiny_learner(frame, [EmbeddingMonitor(views=views_of()), KNNMonitor(k=5)])
    with learn.no_logging(): learn.fit(2, 1e-3)
    assert list(learn.recorder.metric_names) == ['epoch', 'train_loss', 'valid_loss', 'erank', 'uniformity', 'alignment', 'knn_acc', 'time']
    assert len(learn.recorder.values) == 2
    emb, knn = learn.embedding_monitor, learn.knn_monitor
    assert list(emb.history.epoch) == [0, 1] and list(knn.history.epoch) == [0, 1]
    for row, (_, e), (_, k) in zip(learn.recorder.values, emb.history.iterrows(), knn.history.iterrows()):
        assert list(row[2:]) == pytest.approx([e['erank'], e['uniformity'], e['alignment'], k['knn_acc']])
    h = emb.history
    assert ((h.erank >= 1) & (h.erank <= 7)).all()          # 8 validation images: at most 7 directions
    assert ((h.uniformity < 0) & (h.uniformity >= -8)).all() and ((h.alignment >= 0) & (h.alignment <= 4)).all()
    assert set(knn.history.knn_acc) <= {i / 8 for i in range(9)}
    assert sorted(emb.spectra) == [0, 1] and emb.spectra[1].shape == (512,)
    assert effective_rank(emb.spectra[1]) == pytest.approx(h.erank.iloc[1])
    assert len(learn.metrics) == 0


def test_every_skips_epochs_and_measures_the_last(frame):
    learn = tiny_learner(frame, [EmbeddingMonitor(every=2)])
    with learn.no_logging(): learn.fit(3, 1e-3)
    assert list(learn.embedding_monitor.history.epoch) == [1, 2]
    erank = [row[2] for row in learn.recorder.values]
    assert math.isnan(erank[0]) and not math.isnan(erank[1]) and not math.isnan(erank[2])


def test_monitors_do_not_change_the_training(frame):
    "Same weights and buffers with and without monitors, even measuring on the training loader itself."
    plain = tiny_learner(frame)
    with plain.no_logging(): plain.fit(2, 1e-3)
    learn = tiny_learner(frame)
    learn.add_cbs([EmbeddingMonitor(views=views_of()), KNNMonitor(train_dl=learn.dls.train, k=5)])
    with learn.no_logging(): learn.fit(2, 1e-3)
    a, b = weights(plain), weights(learn)
    assert all(torch.equal(a[k], b[k]) for k in a)

    class DrawOnce(Callback):  # the check is sensitive: one stray draw from torch's RNG changes the weights
        def after_validate(self): torch.rand(1)
    leaky = tiny_learner(frame, [DrawOnce()])
    with leaky.no_logging(): leaky.fit(2, 1e-3)
    assert not all(torch.equal(a[k], v) for k, v in weights(leaky).items())


def test_validate_measures_get_preds_does_not(frame):
    calls = []
    class Counting(Monitor):
        def __init__(self): super().__init__(['n'])
        def measure(self, encoder): calls.append(1); return dict(n=len(calls))
    learn = tiny_learner(frame, [Counting()])
    with learn.no_logging(): learn.fit(1, 1e-3)
    assert len(calls) == 1
    assert learn.validate()[-1] == 2 and len(learn.counting.history) == 1   # measured, not recorded
    learn.get_preds()
    assert len(calls) == 2 and len(learn.metrics) == 0


def test_getter_and_errors(frame):
    "A fastai-style Sequential(body, head) measured through its body, whose feature maps are pooled."
    learn = tiny_learner(frame, [EmbeddingMonitor(getter=lambda m: m[0])])
    body = nn.Sequential(*list(learn.model.encoder.model.children())[:-2])  # conv1 ... layer4: maps [B, 512, 2, 2]
    learn.model = nn.Sequential(body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 2)))
    with learn.no_logging(): learn.fit(1, 1e-3)
    assert learn.embedding_monitor.spectra[0].shape == (512,)
    feats, _ = embed(body, learn.dls.valid, progress=False)
    assert learn.embedding_monitor.history.erank[0] == pytest.approx(effective_rank(embedding_spectrum(feats)))
    unlabelled = DataLoaders.from_dsets(TensorDataset(torch.randn(8, 3, 64, 64)), bs=4).train
    learn = tiny_learner(frame, [KNNMonitor(train_dl=unlabelled)])
    with pytest.raises(ValueError, match='must yield labelled batches'), learn.no_logging(): learn.fit(1)


def test_unaugmented_dl_is_the_train_set_in_order(frame):
    dls = classification_dls(frame, 'eye', size=64, bs=8)   # random training augmentation
    dl = unaugmented_dl(dls)
    (x1, y1), (x2, y2) = (embed(nn.Flatten(), dl, progress=False) for _ in range(2))
    assert torch.equal(x1, x2) and len(x1) == 24
    assert [dls.vocab[i] for i in y1.tolist()] == list(frame.eye[:24])
