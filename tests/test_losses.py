"Each loss against an explicit float64 loop over anchors (independent of the vectorised code), on random inputs."
import math
import pytest
import torch
import torch.nn.functional as F
from fundus_ssl.losses import (moco_infonce, nt_xent, positive_weights, supcon_loss, byol_loss, local_infonce,
                               region_boxes, corresponding_regions, semihard_triplet_loss)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

def unit_rows(x):
    "Rows of x as lists of python floats, each scaled to unit length."
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]

def dot(a, b): return sum(u * v for u, v in zip(a, b))

def nll(pos_logit, logits):
    "-log softmax of the positive among `logits` (which include it)."
    return -pos_logit + math.log(sum(math.exp(l) for l in logits))


# ---- references: plain python loops in float64 ---------------------------------------------------------------
def moco_ref(q, k, queue, t):
    q, k, queue = unit_rows(q), unit_rows(k), unit_rows(queue)
    losses = [nll(dot(qi, ki) / t, [dot(qi, ki) / t] + [dot(qi, kj) / t for kj in queue]) for qi, ki in zip(q, k)]
    return sum(losses) / len(losses)

def nt_xent_ref(z1, z2, t):
    z = unit_rows(torch.cat([z1, z2]))
    n = len(z1)
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        losses.append(nll(dot(z[i], z[p]) / t, [dot(z[i], z[a]) / t for a in range(2 * n) if a != i]))
    return sum(losses) / len(losses)

def supcon_ref(features, w, t, base_t=None):
    "features [B, V, D]; w [B][B] python weights. Anchors without positives are skipped; None if there is none."
    b, v, _ = features.shape
    z = {(vi, bi): unit_rows(features[bi, vi][None])[0] for bi in range(b) for vi in range(v)}
    losses = []
    for anchor in z:
        others = [o for o in z if o != anchor]
        weights = [w[anchor[1]][o[1]] for o in others]
        if sum(weights) == 0: continue
        logits = [dot(z[anchor], z[o]) / t for o in others]
        losses.append(sum(wi * nll(l, logits) for wi, l in zip(weights, logits)) / sum(weights))
    if not losses: return None
    return (t / (base_t or t)) * sum(losses) / len(losses)

def equal_weights(labels): return [[float(a == b) for b in labels] for a in labels]

def jaccard_weights(y):
    rows = y.tolist()
    def jac(a, b):
        union = sum(max(u, v) for u, v in zip(a, b))
        return sum(min(u, v) for u, v in zip(a, b)) / union if union else 1.0   # two empty sets are identical
    return [[jac(a, b) for b in rows] for a in rows]

def byol_ref(p, z):
    p, z = unit_rows(p), unit_rows(z)
    return sum(2 - 2 * dot(a, b) for a, b in zip(p, z)) / len(p)

def local_ref(f1, f2, t, valid, cross_image):
    b, r, _ = f1.shape
    a = {(i, j): unit_rows(f1[i, j][None])[0] for i in range(b) for j in range(r)}
    c = {(i, j): unit_rows(f2[i, j][None])[0] for i in range(b) for j in range(r)}
    losses = []
    for (i, j) in a:
        if not valid[i][j]: continue
        cands = [(i2, j2) for (i2, j2) in c if valid[i2][j2] and (cross_image or i2 == i)]
        losses.append(nll(dot(a[i, j], c[i, j]) / t, [dot(a[i, j], c[o]) / t for o in cands]))
    return sum(losses) / len(losses)

def triplet_ref(emb, labels, margin, squared):
    e, lab, n = unit_rows(emb), labels.tolist(), len(labels)
    def dist(x, y):
        d2 = sum((u - v) ** 2 for u, v in zip(x, y))
        return d2 if squared else math.sqrt(d2)
    d = [[dist(e[i], e[j]) for j in range(n)] for i in range(n)]
    losses = []
    for a in range(n):
        negs = [d[a][x] for x in range(n) if lab[x] != lab[a]]
        for p in range(n):
            if p == a or lab[p] != lab[a]: continue
            farther = [x for x in negs if x > d[a][p]]
            d_an = min(farther) if farther else max(negs)
            losses.append(max(0.0, margin + d[a][p] - d_an))
    return sum(losses) / len(losses)


# ---- MoCo ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('device', DEVICES)
def test_moco_matches_loop(device):
    q, k, queue = rand(8, 16, seed=1), rand(8, 16, seed=2), rand(40, 16, seed=3)
    got = moco_infonce(q.to(device), k.to(device), queue.to(device), temperature=0.2)
    assert got.dim() == 0 and got.device.type == device
    assert got.item() == pytest.approx(moco_ref(q, k, queue, 0.2), rel=1e-10)

def test_moco_normalize_flag():
    q, k, queue = (F.normalize(rand(8, 16, seed=s), dim=1) for s in (1, 2, 3))
    assert moco_infonce(q, k, queue, 0.2, normalize=False).item() == pytest.approx(moco_ref(q, k, queue, 0.2), rel=1e-10)
    # without normalisation raw dot products are used: a different value for non-unit inputs
    assert moco_infonce(3 * q, k, queue, 0.2, normalize=False).item() != pytest.approx(moco_ref(q, k, queue, 0.2), rel=1e-3)

def test_moco_random_init_near_log_k_plus_1():
    N, K, D, t = 2048, 4096, 128, 0.2
    loss = moco_infonce(rand(N, D, seed=4).float(), rand(N, D, seed=5).float(), rand(K, D, seed=6).float(), t).item()
    assert abs(loss - math.log(K + 1)) < 0.15
    assert loss == pytest.approx(math.log(K + 1) + 1 / (2 * D * t ** 2), abs=0.04)   # second-order term

def test_moco_keys_and_queue_get_no_gradient():
    q, k, queue = (rand(4, 8, seed=s).requires_grad_() for s in (1, 2, 3))
    moco_infonce(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


# ---- NT-Xent and SupCon ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('device', DEVICES)
def test_nt_xent_matches_loop(device):
    z1, z2 = rand(6, 10, seed=7), rand(6, 10, seed=8)
    got = nt_xent(z1.to(device), z2.to(device), 0.3)
    assert got.item() == pytest.approx(nt_xent_ref(z1, z2, 0.3), rel=1e-10)

@pytest.mark.parametrize('views', [1, 2, 3])
def test_supcon_labels_matches_loop(views):
    f = rand(10, views, 12, seed=9)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2, 4, 5])      # 3, 4, 5 are singletons: no positive when views=1
    for base_t in (None, 0.07):
        got = supcon_loss(f, labels, temperature=0.1, base_temperature=base_t)
        assert got.item() == pytest.approx(supcon_ref(f, equal_weights(labels.tolist()), 0.1, base_t), rel=1e-10)

def test_supcon_excludes_anchors_without_positives():
    f = rand(5, 1, 8, seed=10)
    labels = torch.tensor([0, 0, 1, 2, 3])          # only anchors 0 and 1 have a positive
    got = supcon_loss(f, labels, temperature=0.1).item()
    ref = supcon_ref(f, equal_weights(labels.tolist()), 0.1)   # the loop skips anchors without positives
    assert got == pytest.approx(ref, rel=1e-10)
    assert got != pytest.approx(ref * 2 / 5)        # what averaging the three others in as 0 would give

def test_supcon_weighted_mask_matches_loop():
    f = rand(7, 2, 8, seed=11)
    g = torch.Generator().manual_seed(12)
    mask = torch.rand(7, 7, generator=g, dtype=torch.float64) * (torch.rand(7, 7, generator=g) > 0.5)
    mask[3] = 0                                                   # asymmetric, one row without positives among others
    got = supcon_loss(f, mask=mask, temperature=0.2)
    assert got.item() == pytest.approx(supcon_ref(f, mask.tolist(), 0.2), rel=1e-10)

def test_supcon_multilabel_jaccard_matches_loop():
    f = rand(8, 2, 6, seed=13)
    y = (torch.rand(8, 4, generator=torch.Generator().manual_seed(14)) > 0.5).double()   # float64 weights (int labels give float32)
    y[0] = y[5] = 0                                               # two samples without any label
    got = supcon_loss(f, y, temperature=0.1, multilabel='jaccard')
    assert got.item() == pytest.approx(supcon_ref(f, jaccard_weights(y), 0.1), rel=1e-10)
    soft = torch.rand(8, 4, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    assert supcon_loss(f, soft, multilabel='jaccard').item() == pytest.approx(supcon_ref(f, jaccard_weights(soft), 0.1), rel=1e-10)

def test_supcon_multilabel_per_label_matches_loop():
    f = rand(8, 1, 6, seed=16)
    attrs = torch.tensor([[0, 1, 0], [0, 2, 1], [1, 1, 0], [1, 2, 1], [2, 1, 1], [2, 3, 0], [3, 0, 1], [4, 4, 0]])
    terms = [supcon_ref(f, equal_weights(col), 0.1) for col in attrs.T.tolist()]
    terms = [x for x in terms if x is not None]
    got = supcon_loss(f, attrs, temperature=0.1, multilabel='per_label')
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)

def test_supcon_without_labels_is_simclr():
    z1, z2 = rand(9, 10, seed=17), rand(9, 10, seed=18)
    assert supcon_loss(torch.stack([z1, z2], 1), temperature=0.3).item() == pytest.approx(nt_xent_ref(z1, z2, 0.3), rel=1e-10)
    assert supcon_loss(torch.stack([z1, z2], 1), temperature=0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-12)

def test_supcon_no_positive_anywhere_is_zero_with_a_graph():
    f = rand(4, 1, 5, seed=19).requires_grad_()
    loss = supcon_loss(f, torch.arange(4))
    loss.backward()
    assert loss.item() == 0 and (f.grad == 0).all()

def test_positive_weights_errors():
    with pytest.raises(ValueError, match='labels or mask, not both'): positive_weights(2, torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match='non-negative'): positive_weights(2, mask=-torch.eye(2))
    with pytest.raises(ValueError, match=r'labels must be \[B\] or \[B, L\] with B = 3'): positive_weights(3, torch.zeros(2))


# ---- BYOL ------------------------------------------------------------------------------------------------------
def test_byol_matches_loop():
    p, z = rand(7, 5, seed=20), rand(7, 5, seed=21)
    assert byol_loss(p, z).item() == pytest.approx(byol_ref(p, z), rel=1e-10)


# ---- local InfoNCE and region geometry -------------------------------------------------------------------------
@pytest.mark.parametrize('cross_image', [False, True])
def test_local_infonce_matches_loop(cross_image):
    f1, f2 = rand(3, 4, 6, seed=22), rand(3, 4, 6, seed=23)
    valid = torch.tensor([[True, True, False, True], [True, True, True, True], [False, True, True, False]])
    got = local_infonce(f1, f2, 0.2, valid=valid, cross_image=cross_image)
    assert got.item() == pytest.approx(local_ref(f1, f2, 0.2, valid.tolist(), cross_image), rel=1e-10)

def test_local_infonce_no_valid_region_is_zero():
    f = rand(2, 3, 4, seed=24)
    assert local_infonce(f, f, valid=torch.zeros(2, 3, dtype=torch.bool)).item() == 0

def smooth_image(size=96):
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij')
    return torch.stack([torch.sin(3 * x + 2 * y), torch.cos(4 * y - x), x * y], 0).double()

def test_regions_of_identical_flipped_views_match_exactly():
    img = smooth_image()[None].expand(2, -1, -1, -1)
    fmap = F.avg_pool2d(F.relu(F.conv2d(img, torch.ones(4, 3, 3, 3, dtype=torch.float64), padding=1)), 8)
    crop = torch.tensor([[10., 5, 90, 85], [0, 0, 96, 96]])
    boxes = region_boxes(crop, crop, grid=4)
    plain = corresponding_regions(fmap, crop, torch.tensor([False, False]), boxes)
    mirrored = corresponding_regions(fmap.flip(-1), crop, torch.tensor([True, True]), boxes)
    torch.testing.assert_close(plain, mirrored, rtol=1e-10, atol=1e-10)

def view_of(img, crop, flip, size):
    "The crop (x0, y0, x1, y1) of img [C, H, W] resized to size x size (bilinear), mirrored if flip."
    x0, y0, x1, y1 = crop
    h, w = img.shape[1:]
    ys = y0 + (torch.arange(size, dtype=torch.float64) + 0.5) * (y1 - y0) / size    # source pixel coordinates
    xs = x0 + (torch.arange(size, dtype=torch.float64) + 0.5) * (x1 - x0) / size
    grid = torch.stack(torch.meshgrid(xs / w * 2 - 1, ys / h * 2 - 1, indexing='xy'), -1)
    view = F.grid_sample(img[None], grid[None], mode='bilinear', align_corners=False)[0]
    return view.flip(-1) if flip else view

def test_regions_of_different_crops_correspond():
    img = smooth_image(128)
    crops1 = torch.tensor([[0., 0, 96, 96], [20, 10, 120, 110]])
    crops2 = torch.tensor([[32., 16, 128, 112], [0, 30, 90, 120]])
    flip1, flip2 = torch.tensor([False, True]), torch.tensor([True, False])
    boxes = region_boxes(crops1, crops2, grid=3)
    def regions(crops, flips):
        views = torch.stack([view_of(img, c.tolist(), f, 64) for c, f in zip(crops, flips)])
        return corresponding_regions(F.avg_pool2d(views, 4), crops, flips, boxes)   # feature map 16 x 16
    r1, r2 = regions(crops1, flip1), regions(crops2, flip2)
    shuffled = r2.roll(1, dims=1)
    assert (r1 - r2).abs().max() < 0.05 < (r1 - shuffled).abs().max()
    torch.testing.assert_close(F.normalize(r1, dim=-1), F.normalize(r2, dim=-1), atol=0.05, rtol=0)


# ---- semi-hard triplets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('squared', [True, False])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_semihard_triplet_matches_loop(squared, seed):
    emb = rand(24, 8, seed=100 + seed)
    labels = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(seed))
    got = semihard_triplet_loss(emb, labels, margin=0.5, squared=squared)
    assert got.item() == pytest.approx(triplet_ref(emb, labels, 0.5, squared), rel=1e-9)

def test_semihard_triplet_views_of_images():
    emb = rand(32, 16, seed=30)
    labels = torch.arange(8).repeat_interleave(4)     # 4 views of 8 images, as in SWCL's pseudo-labeler
    assert semihard_triplet_loss(emb, labels).item() == pytest.approx(triplet_ref(emb, labels, 0.5, True), rel=1e-9)


# ---- gradients, precision, devices ----------------------------------------------------------------------------
def test_gradcheck():
    f = rand(4, 2, 3, seed=31).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda x: supcon_loss(x, labels), (f,))
    assert torch.autograd.gradcheck(lambda x: nt_xent(x[:, 0], x[:, 1]), (f,))
    assert torch.autograd.gradcheck(lambda x: local_infonce(x, x.flip(1), cross_image=True), (f,))
    e = rand(8, 3, seed=32).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: semihard_triplet_loss(x, torch.arange(4).repeat(2)), (e,))

def all_losses(a, b, queue, labels):
    return [moco_infonce(a, b, queue), nt_xent(a, b), supcon_loss(torch.stack([a, b], 1), labels), byol_loss(a, b),
            local_infonce(a.view(4, 4, -1), b.view(4, 4, -1)), semihard_triplet_loss(a, labels)]

@pytest.mark.parametrize('device', DEVICES)
def test_fp32_under_autocast(device):
    a, b, queue = (rand(*s, seed=40 + i).float().to(device) for i, s in enumerate([(16, 32), (16, 32), (64, 32)]))
    labels = torch.arange(4).repeat_interleave(4).to(device)
    amp_dtype = torch.float16 if device == 'cuda' else torch.bfloat16
    with torch.autocast(device, dtype=amp_dtype):
        amp = all_losses(a, b, queue, labels)
        half = all_losses(a.to(amp_dtype), b.to(amp_dtype), queue.to(amp_dtype), labels)   # half inputs are cast up
    ref = all_losses(a, b, queue, labels)
    for x, y, h in zip(amp, ref, half):
        assert x.dtype == torch.float32 and h.dtype == torch.float32 and x.dim() == 0
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(h, y, rtol=0.05, atol=0.02)        # only the input rounding differs

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_region_pipeline_on_cuda():
    crop = torch.tensor([[0., 0, 64, 64], [8, 8, 56, 56]], device='cuda')
    flips = torch.tensor([False, True], device='cuda')
    boxes = region_boxes(crop, crop.flip(0), grid=2)
    fmap = torch.randn(2, 8, 8, 8, device='cuda')
    r = corresponding_regions(fmap, crop, flips, boxes)
    assert r.shape == (2, 4, 8) and r.is_cuda
    assert torch.isfinite(local_infonce(r, r)).item()
