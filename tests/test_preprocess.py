"Fundus preprocessing: FOV masks against DRIVE's shipped ones, dark and clipped photos, cropping, resizing, Ben Graham, CLAHE."
import numpy as np
import pytest
from fundus_ssl.core import fundus_data_root
from fundus_ssl.io import read_image, read_mask
from fundus_ssl.preprocess import (red_threshold, fov_mask, fit_circle, circle_mask, fov_bbox, crop_to_fov,
                                   resize_shorter, ben_graham, green_clahe)


def iou(a, b): return (a & b).sum() / (a | b).sum()


def disc_photo(size=200, r=88, gain=1.0, clip=0, seed=0):
    "A vignetted orange disc with dark lesions on a noisy black surround, and its true FOV."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    fov = xx**2 + yy**2 <= r**2
    fov[:clip], fov[size - clip:] = False, False
    shade = (1 - 0.5 * (xx**2 + yy**2) / r**2)[..., None] * [210., 100., 45.]
    shade[90:96, 60:70] = 5  # a dark haemorrhage inside the FOV: must not become a hole
    img = np.where(fov[..., None], gain * shade + rng.normal(0, 3, shade.shape), rng.normal(6, 3, shade.shape))
    return np.clip(img, 0, 255).astype(np.uint8), fov


# ---------------------------------------------------------------- FOV
@pytest.mark.parametrize('kw', [{}, dict(gain=0.3), dict(clip=30), dict(gain=0.3, clip=30)])
@pytest.mark.parametrize('circle', [False, True])
def test_fov_mask_matches_truth(kw, circle):
    img, fov = disc_photo(**kw)
    est = fov_mask(img, circle=circle)
    assert est.dtype == bool and est.shape == fov.shape
    assert iou(est, fov) > 0.97


def test_dark_image_lowers_the_threshold():
    dark, fov = disc_photo(gain=0.3)
    assert red_threshold(disc_photo()[0]) == 40
    assert 12 < red_threshold(dark) < 25
    assert iou(dark[..., 0] > 40, fov) < 0.9 < iou(fov_mask(dark), fov)  # the fixed threshold loses the periphery
    assert red_threshold(np.full((8, 8, 3), 90, np.uint8)) == 40           # one class: nothing to adapt


def test_fov_mask_drops_specks_and_fills_holes():
    img, fov = disc_photo()
    img[5:9, 5:9] = 200  # a bright label outside the FOV
    est = fov_mask(img)
    assert not est[5:9, 5:9].any() and est[90:96, 60:70].all()


def test_fit_circle_ignores_clipping():
    _, fov = disc_photo(size=300, r=140, clip=60)
    cx, cy, r = fit_circle(fov)
    np.testing.assert_allclose([cx, cy, r], [150, 150, 140], atol=0.6)
    with pytest.raises(ValueError, match='empty'): fit_circle(np.zeros((5, 5), bool))


def test_circle_mask_and_bbox():
    m = circle_mask((20, 30), 15, 10, 5)
    assert m.sum() == 81 and fov_bbox(m) == (5, 10, 16, 21)
    with pytest.raises(ValueError, match='mask is empty'): fov_bbox(np.zeros((3, 3), bool))


def test_fov_mask_reads_paths(tmp_path):
    from PIL import Image
    img, fov = disc_photo()
    Image.fromarray(img).save(tmp_path/'x.png')
    np.testing.assert_array_equal(fov_mask(tmp_path/'x.png'), fov_mask(img))


# ---------------------------------------------------------------- crop and resize
def test_crop_keeps_masks_aligned():
    img, fov = disc_photo(clip=30)
    labels = np.zeros(fov.shape, np.uint8); labels[100, 150] = 7
    c_img, c_fov, c_labels = crop_to_fov(img, fov, labels, mask=fov)
    top, left, bottom, right = fov_bbox(fov)
    assert (top, bottom) == (30, 170) and (left, right) == (12, 189)
    np.testing.assert_array_equal(c_img, img[30:170, 12:189])
    assert c_labels[100 - top, 150 - left] == 7 and c_fov.all(axis=1).any()
    np.testing.assert_array_equal(crop_to_fov(img), crop_to_fov(img, mask=fov_mask(img)))
    with pytest.raises(ValueError, match='others\\[1\\] is 200x199'): crop_to_fov(img, fov, labels[:199])


def test_resize_shorter():
    assert resize_shorter(np.zeros((300, 400, 3), np.uint8), 150).shape == (150, 200, 3)
    assert resize_shorter(np.zeros((400, 300), np.uint8), 448).shape == (597, 448)
    labels = np.random.default_rng(0).integers(0, 5, (64, 96)).astype(np.uint8)
    assert set(np.unique(resize_shorter(labels, 50, nearest=True))) <= set(range(5))
    np.testing.assert_array_equal(resize_shorter(labels, 128, nearest=True), labels.repeat(2, 0).repeat(2, 1))
    small = resize_shorter(labels == 3, 32)
    assert small.dtype == bool and small.shape == (32, 48)


# ---------------------------------------------------------------- normalisations
def test_ben_graham():
    flat = np.where(circle_mask((200, 200), 100, 100, 90)[..., None], [150, 80, 40], 0).astype(np.uint8)
    flat[98:102, 120:124] = [250, 180, 140]
    out = ben_graham(flat, radius=45)
    assert out.dtype == np.uint8 and abs(out.shape[0] - 100) <= 1  # scaled by 45/90
    inside, rim = circle_mask(out.shape, 50, 50, 30), ~circle_mask(out.shape, 50, 50, 0.9 * 45)
    assert (out[rim] == 128).all()
    assert np.abs(out[inside & ~circle_mask(out.shape, 61, 50, 8)].astype(int) - 128).max() <= 2  # flat retina: mid grey
    assert out[49:51, 60:62].min() > 180                                                          # a bright spot stands out


def test_green_clahe():
    img = np.zeros((128, 128, 3), np.uint8)
    img[..., 0], img[..., 2] = 250, 7
    img[..., 1] = np.random.default_rng(0).normal(110, 4, (128, 128)).round()
    plain, bright = green_clahe(img, gamma=1), green_clahe(img)
    assert plain.shape == (128, 128) and plain.dtype == np.uint8
    assert plain.std() > 2.5 * img[..., 1].std()
    np.testing.assert_allclose(bright, 255 * (plain / 255) ** (1 / 1.2), atol=0.51)
    assert bright.mean() > plain.mean()  # gamma 1.2 brightens
    other = img.copy(); other[..., 0], other[..., 2] = 3, 200
    np.testing.assert_array_equal(green_clahe(other), bright)  # only the green channel counts


# ---------------------------------------------------------------- real data
def data_root(name):
    root = fundus_data_root(name)
    if root is None: pytest.skip(f'{name} not found: set FUNDUS_DATA to the shared data folder')
    return root


def drive_pairs():
    root = data_root('DRIVE')
    for img in sorted(root.glob('*/images/*.tif')):
        yield img, img.parent.parent/'mask'/img.name.replace('.tif', '_mask.gif')


@pytest.mark.parametrize('circle', [False, True])
def test_fov_mask_on_drive(circle):
    ious = {img.name: iou(fov_mask(img, circle=circle), read_mask(mask) > 0) for img, mask in drive_pairs()}
    assert len(ious) == 40
    assert min(ious.values()) > 0.95, ious
    assert np.mean(list(ious.values())) > 0.985


def test_drive_crop_and_normalise():
    img_path, mask_path = next(drive_pairs())
    img, fov = read_image(img_path), read_mask(mask_path) > 0
    c_img, c_fov = crop_to_fov(img, fov, mask=fov)
    assert c_fov.any(0).all() and c_fov.any(1).all()  # tight: every row and column meets the FOV
    bg = ben_graham(img, radius=128, mask=fov)
    cx, cy, r = fit_circle(fov)
    assert abs(r - 270) < 5
    inside = circle_mask(bg.shape, cx * 128 / r, cy * 128 / r, 100)
    assert abs(np.median(bg[inside]) - 128) < 8  # illumination removed: the retina sits at mid grey


def test_fov_mask_on_stare_and_eyepacs():
    stare, eyepacs = data_root('STARE'), data_root('EyePACS')
    for path in sorted((stare/'stare-images').glob('*.ppm.gz')):
        img = read_image(path)
        m = fov_mask(img)
        top, left, bottom, right = fov_bbox(m)
        assert 0.65 < m.mean() < 0.85 and right - left > 600 and top > 0 and bottom < 605, path.name  # clipped inside the frame
        assert iou(fov_mask(img, circle=True), m) > 0.975, path.name  # the circle follows the outline
    left_eye, right_eye = (resize_shorter(read_image(eyepacs/f'sample/10_{eye}.jpeg'), 400) for eye in ('left', 'right'))
    assert red_threshold(right_eye) < 25  # 10_right is underexposed
    assert abs(fov_mask(left_eye).mean() - fov_mask(right_eye).mean()) < 0.01  # same camera, same FOV
