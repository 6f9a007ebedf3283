"Two-view augmentation: geometry of both paths, FOV constraint, seeds, normalisation, probabilities, speed (with FUNDUS_TIMING=1), autocast."
import os, time
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from fundus_ssl.core import fundus_data_root
from fundus_ssl.augment import (AUG_PRESETS, EYEPACS_MEAN, TwoViewAug, TwoViewItemAug, TwoViews, aug_settings,
                                denormalize_views, fov_fraction, fundus_like_batch, images_as_float, resized_crop,
                                sample_crop_boxes, threshold_fov, view_coords, adjust_hue, color_jitter, sample_colour,
                                JITTER_STEPS)
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

# Speed is measured only when asked (FUNDUS_TIMING=1): no test of the suite may depend on how fast or busy the machine is.
timing = pytest.mark.skipif(not os.environ.get('FUNDUS_TIMING'), reason='measures speed: set FUNDUS_TIMING=1 to run it')

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
PLAIN = dict(p_jitter=0., p_gray=0., p_blur=0., p_solarize=0., mean=None, std=None)  # geometry only


def hwc(x): return x.permute(1, 2, 0).numpy()

def cv2_view(img, box, flip, size):
    "The reference view: cv2 crop of the (H, W, 3) image at box, resized, flipped when flagged, [3, S, S] in [0, 255]."
    ref = torch.from_numpy(resized_crop(img, box, size)).permute(2, 0, 1).float()
    return ref.flip(-1) if flip else ref

def views_of(tv):
    return [(tv.view1, tv.box1, tv.flip1), (tv.view2, tv.box2, tv.flip2)]

def real_images(n=16):
    "n EyeDiseases4class_256 images [n, 3, 256, 256] uint8, or None without the data."
    root = fundus_data_root('EyeDiseases4class_256')
    if root is None: return None
    files = [f for c in ('cataract', 'diabetic_retinopathy', 'glaucoma', 'normal') for f in sorted((root/c).iterdir())[:n // 4]]
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert('RGB'))).permute(2, 0, 1) for f in files])


# ---- geometry ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('hw,size', [((96, 96), 48), ((80, 120), 64), ((64, 64), 96)])  # shrink, non-square, enlarge
def test_device_views_are_crops_at_returned_boxes(device, hw, size):
    imgs = fundus_like_batch(12, max(hw), seed=1)[..., :hw[0], :hw[1]]
    tv = TwoViewAug('mocov2', size=size, seed=0, **PLAIN)(imgs.to(device))
    for v, box, flip in views_of(tv):
        assert v.device.type == device and box.device.type == device
        for i in range(len(imgs)):
            err = (v[i].cpu() * 255 - cv2_view(hwc(imgs[i]), box[i].cpu(), flip[i], size)).abs()
            assert err.mean() < 2.0 and err.max() < 60, (i, err.mean(), err.max())
        assert flip.any() and not flip.all()
        x0, y0, x1, y1 = box.cpu().unbind(-1)
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= hw[1]).all() and (y1 <= hw[0]).all() and (x1 > x0).all()

def test_item_views_are_crops_at_returned_boxes():
    img = hwc(fundus_like_batch(1, 96, seed=2)[0])
    aug = TwoViewItemAug('byol', size=40, seed=0, **PLAIN)
    flips = []
    for _ in range(10):
        tv = aug(img)
        for v, box, flip in views_of(tv):
            torch.testing.assert_close(v * 255, cv2_view(img, box, flip, 40), atol=1e-3, rtol=0)
            flips.append(bool(flip))
    assert any(flips) and not all(flips)

@pytest.mark.parametrize('path', ['device', 'item'])
def test_marked_pixel_lands_where_view_coords_says(path):
    "A single bright pixel of the input appears in each view at view_coords of its centre (within one view pixel)."
    size, hits = 64, 0
    for seed in range(12):
        img = torch.zeros(3, 96, 96, dtype=torch.uint8)
        y, x = 30 + 3 * seed, 60 - 2 * seed
        img[:, y, x] = 255
        fov = torch.ones(96, 96, dtype=torch.bool)
        kw = dict(size=size, seed=seed, scale=(0.3, 0.6), **PLAIN)
        tv = TwoViewAug('mocov2', **kw)(img[None], fov[None]) if path == 'device' else TwoViewItemAug('mocov2', **kw)(hwc(img), fov.numpy())
        for v, box, flip in views_of(tv):
            v, box = v.reshape(3, size, size)[0], box.reshape(4)
            uv = view_coords(torch.tensor([x + 0.5, y + 0.5]), box, flip.reshape(()), size)
            if not ((uv > 1) & (uv < size - 1)).all(): continue  # the pixel fell outside this crop
            hits += 1
            r, c = divmod(int(v.argmax()), size)
            assert abs(c + 0.5 - uv[0]) <= 1.0 and abs(r + 0.5 - uv[1]) <= 1.0, (seed, (c, r), uv)
    assert hits >= 8

def test_views_give_corresponding_regions_for_local_loss():
    "With the views as feature maps, fundus_ssl.losses.corresponding_regions pools the same content from both views."
    losses = pytest.importorskip('fundus_ssl.losses')
    imgs = fundus_like_batch(16, 128, seed=3)
    tv = TwoViewAug('mocov2', size=64, seed=0, scale=(0.4, 1.), **PLAIN)(imgs)
    boxes = losses.region_boxes(tv.box1, tv.box2, grid=2)
    keep = losses.nonempty_boxes(boxes) & ((boxes[..., 2] - boxes[..., 0]) > 8) & ((boxes[..., 3] - boxes[..., 1]) > 8)
    r1 = losses.corresponding_regions(tv.view1, tv.box1, tv.flip1, boxes)
    r2 = losses.corresponding_regions(tv.view2, tv.box2, tv.flip2, boxes)
    shuffled = losses.corresponding_regions(tv.view2, tv.box2, ~tv.flip2, boxes)  # wrong flags: regions no longer match
    assert keep.sum() > 30
    assert (r1 - r2).abs()[keep].mean() < 0.01
    assert (r1 - shuffled).abs()[keep].mean() > 3 * (r1 - r2).abs()[keep].mean()


# ---- FOV constraint ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('min_fov', [0.5, 0.9])
def test_boxes_meet_fov_fraction(min_fov):
    imgs = fundus_like_batch(64, 128, seed=4)
    fov = threshold_fov(imgs)
    boxes = sample_crop_boxes(fov, scale=(0.02, 0.1), min_fov=min_fov, n_candidates=30, generator=torch.Generator().manual_seed(0))
    assert (fov_fraction(fov, boxes) >= min_fov).all()
    # without the constraint, such small crops often fall in the black corners: the constraint does work
    free = sample_crop_boxes(fov, scale=(0.02, 0.1), min_fov=0., generator=torch.Generator().manual_seed(0))
    assert (fov_fraction(fov, free) < min_fov).sum() >= 3

def test_fov_fraction_by_brute_force():
    g = torch.Generator().manual_seed(0)
    fov = torch.rand(3, 20, 30, generator=g) > 0.5
    boxes = sample_crop_boxes(torch.ones(3, 20, 30, dtype=torch.bool), scale=(0.05, 0.5), generator=g)
    brute = torch.stack([fov[i, int(y0):int(y1), int(x0):int(x1)].float().mean() for i, (x0, y0, x1, y1) in enumerate(boxes)])
    torch.testing.assert_close(fov_fraction(fov, boxes).float(), brute)

def test_views_meet_fov_fraction_on_real_images():
    imgs = real_images()
    if imgs is None: pytest.skip('FUNDUS_DATA/EyeDiseases4class_256 not available')
    aug = TwoViewAug('byol', size=64, seed=0, min_fov=0.8, n_candidates=30)
    tv = aug(imgs)
    fov = threshold_fov(imgs)
    assert (fov_fraction(fov, tv.box1) >= 0.8).all() and (fov_fraction(fov, tv.box2) >= 0.8).all()


# ---- randomness -------------------------------------------------------------------------------------------------
def test_same_seed_same_views_other_seed_other_views():
    imgs = fundus_like_batch(8, 64, seed=5)
    a, b, c = (TwoViewAug('swcl', size=32, seed=s)(imgs) for s in (0, 0, 1))
    for x, y in zip(a, b): torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert not torch.equal(a.box1, c.box1) and not torch.equal(a.view1, c.view1)
    img = hwc(imgs[0])
    a, b, c = (TwoViewItemAug('swcl', size=32, seed=s)(img) for s in (0, 0, 1))
    for x, y in zip(a, b): torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert not torch.equal(a.view1, c.view1)

def test_global_generator_is_reproducible_under_manual_seed():
    imgs = fundus_like_batch(4, 64, seed=5)
    aug = TwoViewAug('mocov2', size=32)
    torch.manual_seed(3); a = aug(imgs)
    torch.manual_seed(3); b = aug(imgs)
    torch.testing.assert_close(a.view2, b.view2, atol=0, rtol=0)

def test_batch_samples_get_different_boxes():
    imgs = fundus_like_batch(1, 96, seed=6).expand(64, -1, -1, -1)  # the same image 64 times
    tv = TwoViewAug('mocov2', size=32, seed=0)(imgs)
    assert len(set(map(tuple, tv.box1.tolist()))) >= 60
    assert not torch.equal(tv.box1, tv.box2)
    assert 20 < int(tv.flip1.sum()) < 44

def test_dataloader_workers_draw_different_views():
    img = hwc(fundus_like_batch(1, 64, seed=7)[0])
    torch.manual_seed(0)
    dl = DataLoader([img] * 8, batch_size=2, num_workers=2, collate_fn=lambda items: default_collate([TwoViewItemAug('mocov2', size=32)(i) for i in items]))
    batches = list(dl)
    assert type(batches[0]) is TwoViews and batches[0].view1.shape == (2, 3, 32, 32)
    boxes = torch.cat([b.box1 for b in batches])
    assert len(set(map(tuple, boxes.tolist()))) == 8

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_same_seed_same_boxes_on_cpu_and_gpu():
    imgs = fundus_like_batch(16, 96, seed=8)
    a = TwoViewAug('mocov2', size=48, seed=0)(imgs)
    b = TwoViewAug('mocov2', size=48, seed=0)(imgs.cuda())
    torch.testing.assert_close(a.box1, b.box1.cpu(), atol=0, rtol=0)
    torch.testing.assert_close(a.flip2, b.flip2.cpu())
    torch.testing.assert_close(a.view1, b.view1.cpu(), atol=2e-3, rtol=0)


# ---- normalisation ----------------------------------------------------------------------------------------------
def test_outputs_normalised_as_asked():
    imgs = fundus_like_batch(8, 64, seed=9)
    mean, std = (0.3, 0.2, 0.1), (0.5, 0.25, 0.2)
    plain = {k: v for k, v in PLAIN.items() if k not in ('mean', 'std')}
    raw = TwoViewAug('mocov2', size=32, seed=0, **PLAIN)(imgs)
    norm = TwoViewAug('mocov2', size=32, seed=0, mean=mean, std=std, **plain)(imgs)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm.view1, (raw.view1 - m) / s)
    item = TwoViewItemAug('swcl', size=32, seed=0, **plain)(hwc(imgs[0]))
    ref = cv2_view(hwc(imgs[0]), item.box1, item.flip1, 32) / 255
    torch.testing.assert_close(item.view1, (ref - torch.tensor(EYEPACS_MEAN).view(3, 1, 1)) / torch.tensor(aug_settings('swcl').std).view(3, 1, 1), atol=1e-4, rtol=0)
    for name in AUG_PRESETS:  # full presets: un-normalised views lie in [0, 1]
        aug = TwoViewAug(name, size=32, seed=0)
        tv = aug(imgs)
        x = denormalize_views(tv.view2, aug.settings[1])
        assert x.min() > -1e-4 and x.max() < 1 + 1e-4, name


# ---- colour jitter: torchvision's definition, per image ---------------------------------------------------------
def random_colours(n, seed=0):
    "Random colours with gray pixels, black, white and saturated corners."
    x = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0] = x[:, :1, 0]; x[:, :, 1, :3] = 0.; x[:, :, 1, 3:6] = 1.; x[:, 0, 2], x[:, 1:, 2] = 1., 0.
    return x

@pytest.mark.parametrize('device', DEVICES)
def test_hue_matches_torchvision_adjust_hue_per_image(device):
    "Each image's own shift over [-0.5, 0.5] equals torchvision's HSV adjust_hue (the YIQ rotation missed by 0.1 and more)."
    x = random_colours(41)
    shifts = torch.linspace(-0.5, 0.5, 41)
    ours = adjust_hue(x.to(device), shifts.to(device)).cpu()
    for i, h in enumerate(shifts.tolist()):
        torch.testing.assert_close(ours[i], TF.adjust_hue(x[i], h), atol=2e-6, rtol=0)

@pytest.mark.parametrize('device', DEVICES)
def test_jitter_in_each_images_order_matches_torchvision_steps(device):
    "sample_colour's factors and per-image order, applied by color_jitter, equal torchvision's steps in that order."
    x = images_as_float(fundus_like_batch(24, 16, seed=20))
    p = sample_colour(24, aug_settings('mocov2', p_jitter=1.), torch.Generator().manual_seed(0))
    ours = color_jitter(x.to(device), p['brightness'], p['contrast'], p['saturation'], p['hue'], p['order']).cpu()
    steps = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(24):
        ref = x[i]
        for k in p['order'][i].tolist(): ref = steps[k](ref, p[JITTER_STEPS[k]][i].item())
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
    assert len({tuple(o) for o in p['order'].tolist()}) > 10            # not one fixed order

def test_order_matters_and_is_drawn_per_image():
    "The same factors in two orders give different images (so a fixed order is a different distribution)."
    x = images_as_float(fundus_like_batch(2, 16, seed=21))
    f = dict(brightness=torch.tensor([1.4, 1.4]), contrast=torch.tensor([.6, .6]), saturation=torch.tensor([1.4, 1.4]), hue=torch.tensor([.1, .1]))
    a = color_jitter(x[:1].expand(2, -1, -1, -1), *f.values(), order=torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))
    assert (a[0] - a[1]).abs().max() > 0.01
    p = sample_colour(4000, aug_settings('mocov2'), torch.Generator().manual_seed(1))
    first = torch.bincount(p['order'][:, 0], minlength=4) / 4000
    assert (first - 0.25).abs().max() < 0.03, first

def test_jitter_distribution_matches_torchvision_colorjitter():
    "Mean and spread of the jittered pixels over many draws: ours (device path) against torchvision's ColorJitter."
    x = images_as_float(fundus_like_batch(1, 16, seed=22))
    n = 2000
    ours = color_jitter(x.expand(n, -1, -1, -1), **{k: v for k, v in sample_colour(n, aug_settings('mocov2', p_jitter=1.),
                        torch.Generator().manual_seed(2)).items() if k in JITTER_STEPS + ('order',)})
    torch.manual_seed(3)
    cj = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    ref = torch.stack([cj(x[0]) for _ in range(n)])
    for stat in (lambda v: v.mean((0, 2, 3)), lambda v: v.std(0).mean((1, 2))):      # per channel, over draws and pixels
        torch.testing.assert_close(stat(ours), stat(ref), atol=0.01, rtol=0)


# ---- probabilities: measured on the outputs ---------------------------------------------------------------------
@pytest.mark.parametrize('op,p', [('p_jitter', 0.8), ('p_blur', 0.5), ('p_gray', 0.2), ('p_solarize', 0.1)])
def test_device_operation_frequency_near_p(op, p):
    "Views that differ from the plain crop at the same boxes, over 2 x 300 views."
    imgs = fundus_like_batch(300, 48, seed=10)
    kw = dict(PLAIN, size=24, sigma=(1., 2.), solarize_threshold=0.2)
    plain = TwoViewAug('mocov2', seed=0, **kw)(imgs)
    aug = TwoViewAug('mocov2', seed=0, **dict(kw, **{op: p}))(imgs)
    torch.testing.assert_close(aug.box1, plain.box1, atol=0, rtol=0)  # same draws: same geometry
    changed = torch.cat([(a - b).abs().amax((1, 2, 3)) > 1e-3 for a, b in [(aug.view1, plain.view1), (aug.view2, plain.view2)]])
    assert abs(changed.float().mean() - p) < 0.06, (op, changed.float().mean())

def test_item_operation_frequencies_near_p():
    img = hwc(fundus_like_batch(1, 48, seed=11)[0])
    aug = TwoViewItemAug('swcl', size=24, seed=0)
    counts, n = {}, 300
    for _ in range(n):
        aug(img)
        for names in aug.applied:
            for t in names: counts[t] = counts.get(t, 0) + 1
    for t, p in [('ColorJitter', 0.8), ('GaussianBlur', 0.5), ('ToGray', 0.2), ('Solarize', 0.1)]:
        assert abs(counts.get(t, 0) / (2 * n) - p) < 0.06, (t, counts)


# ---- speed, autocast, errors ------------------------------------------------------------------------------------
@timing
def test_device_path_batch_64_at_128_px_is_fast_on_cpu():
    imgs = fundus_like_batch(64, 256, seed=12)
    aug = TwoViewAug('mocov2', size=128, seed=0)
    aug(imgs[:2])
    t0 = time.perf_counter(); tv = aug(imgs); dt = time.perf_counter() - t0
    assert tv.view1.shape == (64, 3, 128, 128)
    assert dt < 10, dt

@pytest.mark.parametrize('device', DEVICES)
def test_same_views_under_autocast(device):
    imgs = fundus_like_batch(8, 64, seed=13).to(device)
    ref = TwoViewAug('swcl', size=32, seed=0)(imgs)
    with torch.autocast(device, dtype=torch.bfloat16 if device == 'cpu' else torch.float16):
        amp = TwoViewAug('swcl', size=32, seed=0)(imgs)
    assert amp.view1.dtype == torch.float32
    torch.testing.assert_close(amp.view1, ref.view1, atol=1e-5, rtol=0)

def test_float_input_equals_uint8_input():
    imgs = fundus_like_batch(4, 64, seed=14)
    a = TwoViewAug('mocov2', size=32, seed=0)(imgs)
    b = TwoViewAug('mocov2', size=32, seed=0)(images_as_float(imgs))
    torch.testing.assert_close(a.view1, b.view1)

def test_bad_inputs_raise_clear_errors():
    aug = TwoViewAug('mocov2', size=32)
    with pytest.raises(ValueError, match=r'expected \[B, 3, H, W\]'): aug(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'must be in \[0, 1\]'): aug(torch.full((1, 3, 32, 32), 200.))
    with pytest.raises(TypeError, match='uint8, or float'): aug(torch.zeros(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match='a pair'): TwoViewAug(('mocov2',) * 3)
    with pytest.raises(ValueError, match='AugSettings.p_blur'): TwoViewAug('mocov2', p_blur=1.5)


# ---- real data --------------------------------------------------------------------------------------------------
def test_eyepacs_statistics_are_rgb():
    "SWCL's EyePACS means, reversed to RGB here, match the RGB means of the local EyePACS sample."
    import cv2
    root = fundus_data_root('EyePACS')
    if root is None: pytest.skip('FUNDUS_DATA/EyePACS not available')
    files = sorted((root/'sample').glob('*.jpeg'))
    assert files, f'no .jpeg images in {root/"sample"}'
    means = np.mean([cv2.imread(str(f), cv2.IMREAD_REDUCED_COLOR_8)[..., ::-1].reshape(-1, 3).mean(0) / 255 for f in files], 0)
    assert np.abs(means - np.array(EYEPACS_MEAN)).max() < 0.03, means
    assert means[0] > means[1] > means[2]

def test_fov_of_wrong_shape_raises():
    imgs = fundus_like_batch(2, 32)
    with pytest.raises(ValueError, match=r'fov: expected a mask of shape \[2, 32, 32\]'):
        TwoViewAug('mocov2', size=16)(imgs, torch.ones(2, 32, 31, dtype=torch.bool))
