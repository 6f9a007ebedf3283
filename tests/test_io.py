"Image and mask IO: every format and depth the fundus datasets ship, strict errors, mask encodings, and the real files."
import gzip
import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile
from fundus_ssl.core import fundus_data_root
from fundus_ssl.io import (ImageReadError, read_pil, read_image, read_mask, read_drishti_mask, read_lesion_masks,
                           check_same_size, to_uint8, bit_depth)

RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
GRAY = RGB[..., 1].copy()
RAMP = np.broadcast_to(np.linspace(0, 255, 30).astype(np.uint8)[None, :, None], (20, 30, 3)).copy()  # JPEG-friendly


def save(path, im, **kw):
    im.save(path, **kw)
    return path


def gzip_file(path):
    gz = path.with_name(path.name + '.gz')
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return gz


def palette_image(indices, colours):
    im = Image.frombytes('P', indices.shape[::-1], indices.astype(np.uint8).tobytes())
    im.putpalette(np.array(colours, np.uint8).ravel().tolist())
    return im


# ---------------------------------------------------------------- images
@pytest.mark.parametrize('name,kw', [('a.tif', dict(compression='tiff_lzw')), ('a.TIFF', dict(compression='tiff_lzw')),
                                     ('a.png', {}), ('a.bmp', {}), ('a.ppm', {})])
def test_lossless_rgb_round_trip(tmp_path, name, kw):
    path = save(tmp_path/name, Image.fromarray(RGB), **kw)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, RGB)


def test_tiff_is_really_lzw(tmp_path):
    path = save(tmp_path/'a.tif', Image.fromarray(RGB), compression='tiff_lzw')
    assert read_pil(path).info['compression'] == 'tiff_lzw'


def test_gzipped_ppm(tmp_path):
    gz = gzip_file(save(tmp_path/'im0001.ppm', Image.fromarray(RGB)))
    np.testing.assert_array_equal(read_image(gz), RGB)
    gray_gz = gzip_file(save(tmp_path/'im0001.ah.ppm', Image.fromarray(GRAY)))  # STARE labels are 1-channel PPM (PGM)
    np.testing.assert_array_equal(read_image(gray_gz), np.dstack([GRAY] * 3))


@pytest.mark.parametrize('ext', ['tif', 'png'])
def test_16bit_gray_keeps_high_byte(tmp_path, ext):
    a16 = GRAY.astype(np.uint16) * 256 + 100   # the low byte must not leak in
    im = Image.fromarray(a16)
    assert im.mode == 'I;16'
    out = read_image(save(tmp_path/f'a16.{ext}', im))
    np.testing.assert_array_equal(out, np.dstack([GRAY] * 3))


def test_1bit_png(tmp_path):
    bits = GRAY > 127
    path = save(tmp_path/'bits.png', Image.fromarray(bits).convert('1'))
    assert Image.open(path).mode == '1'
    np.testing.assert_array_equal(read_image(path)[..., 2], np.where(bits, 255, 0))
    np.testing.assert_array_equal(read_mask(path), bits.astype(np.uint8))
    np.testing.assert_array_equal(read_mask(path, 'label'), bits.astype(np.uint8))


def test_palette_png_colours_and_indices(tmp_path):
    idx = (GRAY % 3).astype(np.uint8)
    colours = [(0, 0, 0), (255, 0, 0), (10, 200, 30)] + [(0, 0, 0)] * 253
    path = save(tmp_path/'pal.png', palette_image(idx, colours))
    assert Image.open(path).mode == 'P'
    np.testing.assert_array_equal(read_image(path), np.array(colours[:3], np.uint8)[idx])
    np.testing.assert_array_equal(read_mask(path, 'label'), idx)
    np.testing.assert_array_equal(read_mask(path), (idx > 0).astype(np.uint8))  # a channel of each colour > 127


def test_rgba_png_drops_alpha(tmp_path):
    path = save(tmp_path/'rgba.png', Image.fromarray(np.dstack([RGB, np.full_like(GRAY, 7)])))
    np.testing.assert_array_equal(read_image(path), RGB)


@pytest.mark.parametrize('mode', ['L', 'P'])
def test_gif(tmp_path, mode):
    im = Image.fromarray(GRAY) if mode == 'L' else palette_image(GRAY % 2, [(4, 2, 4), (252, 254, 252)] + [(0, 0, 0)] * 254)
    path = save(tmp_path/f'mask_{mode}.gif', im)  # DRIVE ships both: 1st_manual as L, 2nd_manual as P
    expected = GRAY if mode == 'L' else np.where(GRAY % 2, 254, 2)
    if mode == 'L': np.testing.assert_array_equal(read_image(path)[..., 0], expected)
    np.testing.assert_array_equal(read_mask(path), (expected > 127).astype(np.uint8))


@pytest.mark.parametrize('name', ['a.JPG', 'a.jpeg', 'a.Jpg', 'a.JPEG'])
def test_jpeg_any_extension_case(tmp_path, name):
    out = read_image(save(tmp_path/name, Image.fromarray(RAMP), quality=95))
    assert out.shape == (20, 30, 3)
    assert np.abs(out.astype(int) - RAMP).max() <= 4


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    out = read_image(save(tmp_path/'cmyk.jpg', Image.fromarray(RAMP).convert('CMYK'), quality=95))
    assert out.shape == (20, 30, 3) and np.abs(out.astype(int) - RAMP).max() <= 6


def noisy_file(tmp_path, fmt):
    noise = np.tile(RGB, (4, 3, 1))  # incompressible, so half the file is half the pixels
    return save(tmp_path/f'noise.{fmt.lower()}', Image.fromarray(noise), format=fmt)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
@pytest.mark.parametrize('lenient', [False, True])
def test_truncated_file_raises_naming_it(tmp_path, fmt, lenient):
    data = noisy_file(tmp_path, fmt).read_bytes()
    cut = tmp_path/f'cut_{fmt}.img'
    cut.write_bytes(data[:len(data) // 2])
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = lenient  # another library may have switched PIL to lenient decoding
    try:
        with pytest.raises(ImageReadError, match=f'cut_{fmt}.img.*truncated'):
            read_image(cut)
        assert ImageFile.LOAD_TRUNCATED_IMAGES == lenient  # the global is left as found
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_truncated_gzip_and_garbage_and_missing(tmp_path):
    gz = gzip_file(save(tmp_path/'im.ppm', Image.fromarray(RGB)))
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(ImageReadError, match='im.ppm.gz: cannot read'): read_image(gz)
    (tmp_path/'junk.png').write_bytes(b'not an image at all')
    with pytest.raises(ImageReadError, match='junk.png: cannot read'): read_image(tmp_path/'junk.png')
    with pytest.raises(ImageReadError, match='absent.tif: no such file'): read_image(tmp_path/'absent.tif')
    with pytest.raises(ImageReadError, match='absent.gif'): read_mask(tmp_path/'absent.gif')
    assert issubclass(ImageReadError, ValueError)


def test_arrays_pass_through_the_same_rules():
    np.testing.assert_array_equal(read_image(GRAY), np.dstack([GRAY] * 3))
    np.testing.assert_array_equal(read_image(RGB / 255.), RGB)
    np.testing.assert_array_equal(read_image(GRAY.astype(np.uint16) << 8), np.dstack([GRAY] * 3))
    np.testing.assert_array_equal(read_image(GRAY > 127)[..., 0], np.where(GRAY > 127, 255, 0))
    np.testing.assert_array_equal(read_image(RGB.astype(np.int64)), RGB)
    assert read_image(RGB) is not None and read_image(RGB).flags['C_CONTIGUOUS']
    with pytest.raises(ValueError, match=r'array: expected .* got float64 in \[0.0, 255.0\]'): read_image(RGB * 1.)
    with pytest.raises(ValueError, match='1-4 channels'): read_image(np.zeros((4, 4, 6), np.uint8))
    assert to_uint8(np.array([65535, 255], np.uint16)).tolist() == [255, 0]


def test_12_bit_png_is_scaled_by_its_depth(tmp_path):
    "A 12-bit camera image in a 16-bit PNG (0-4095) reads as the picture, not as 0-15 (black)."
    png = save(tmp_path/'cam12.png', Image.fromarray((GRAY.astype(np.uint32) * 4095 // 255).astype(np.uint16)))
    assert Image.open(png).mode.startswith('I') and np.asarray(Image.open(png)).max() <= 4095
    out = read_image(png)
    assert np.abs(out[..., 0].astype(int) - GRAY).max() <= 1 and out.max() >= 254
    np.testing.assert_array_equal(read_image(GRAY.astype(np.uint16) << 4), np.dstack([GRAY] * 3))  # 12-bit array
    np.testing.assert_array_equal(read_image(GRAY.astype(np.uint16) << 2), np.dstack([GRAY] * 3))  # 10-bit array
    np.testing.assert_array_equal(read_image(GRAY.astype(np.uint16)), np.dstack([GRAY] * 3))       # 8 bits in 16
    assert bit_depth(GRAY.astype(np.uint16) << 4) == 12 and bit_depth(GRAY.astype(np.uint16) << 8) == 16
    mask = save(tmp_path/'mask12.png', Image.fromarray((GRAY > 127).astype(np.uint16) * 4095))   # 0/4095 mask
    np.testing.assert_array_equal(read_mask(mask), GRAY > 127)


# ---------------------------------------------------------------- masks
def test_binary_threshold_is_robust(tmp_path):
    truth = np.zeros((40, 40), bool); truth[10:30, 12:20] = True
    jpg = save(tmp_path/'mask.jpg', Image.fromarray(truth.astype(np.uint8) * 255), quality=70)
    raw = np.asarray(Image.open(jpg))
    assert len(np.unique(raw)) > 2  # really lossy
    np.testing.assert_array_equal(read_mask(jpg), truth)
    soft = np.where(truth, 200, 0).astype(np.uint8); soft[0, 0] = 100   # anti-aliased edge: 100 is out, 200 in
    np.testing.assert_array_equal(read_mask(soft), truth)
    np.testing.assert_array_equal(read_mask(truth.astype(np.uint8)), truth)          # stored as 0/1
    np.testing.assert_array_equal(read_mask(truth.astype(np.uint16) * 65535), truth)  # 16-bit
    np.testing.assert_array_equal(read_mask(np.zeros((5, 5), np.uint8) + 3), np.zeros((5, 5)))  # noise only: empty
    red = np.dstack([truth * 255, 0 * truth, 0 * truth]).astype(np.uint8)             # IDRiD draws lesions in red
    np.testing.assert_array_equal(read_mask(save(tmp_path/'red.tif', Image.fromarray(red))), truth)
    assert read_mask(jpg).dtype == np.uint8


def test_refuge_encoding(tmp_path):
    labels = np.zeros((48, 48), np.uint8); labels[8:40, 8:40] = 1; labels[18:30, 18:30] = 2
    stored = np.array([255, 128, 0], np.uint8)[labels]
    bmp = save(tmp_path/'g0001.bmp', Image.fromarray(stored))  # REFUGE: one-channel BMP
    assert Image.open(bmp).mode == 'L'
    np.testing.assert_array_equal(read_mask(bmp, 'refuge'), labels)
    jpg = save(tmp_path/'g0001.jpg', Image.fromarray(np.dstack([stored] * 3)), quality=80)  # lossy RGB copy
    np.testing.assert_array_equal(read_mask(jpg, 'refuge'), labels)
    noisy = stored.astype(int) + np.random.default_rng(1).integers(-50, 51, stored.shape)
    np.testing.assert_array_equal(read_mask(noisy.clip(0, 255).astype(np.uint8), 'refuge'), labels)
    with pytest.raises(ValueError, match='g0001.png: no background'):
        read_mask(save(tmp_path/'g0001.png', Image.fromarray(labels)), 'refuge')  # 0/1/2 is not this encoding
    with pytest.raises(ValueError, match="encoding='REFUGE'"): read_mask(bmp, 'REFUGE')
    disc = save(tmp_path/'n0001.bmp', Image.fromarray((labels > 0).astype(np.uint8) * 255))  # 0/255: the binary encoding
    with pytest.raises(ValueError, match=r'n0001.bmp: cup \(0\) pixels but no disc rim \(128\)'): read_mask(disc, 'refuge')
    np.testing.assert_array_equal(read_mask(disc, 'binary'), labels > 0)


def test_label_encoding_keeps_values(tmp_path):
    labels = (GRAY % 5).astype(np.uint8)
    np.testing.assert_array_equal(read_mask(save(tmp_path/'l.png', Image.fromarray(labels)), 'label'), labels)
    np.testing.assert_array_equal(read_mask(np.dstack([labels] * 3), 'label'), labels)
    with pytest.raises(ValueError, match='channels differ'): read_mask(RGB, 'label')
    with pytest.raises(ValueError, match='integer labels in 0-255'): read_mask(labels.astype(np.int32) + 300, 'label')


def test_drishti_soft_maps(tmp_path):
    votes_od = np.zeros((10, 10)); votes_od[1:9, 1:9] = 1; votes_od[2:8, 2:8] = 2; votes_od[3:7, 3:7] = 4
    votes_cup = np.zeros((10, 10)); votes_cup[4:6, 4:6] = 3; votes_cup[4, 4] = 4
    as_png = lambda votes, name: save(tmp_path/name, Image.fromarray((votes / 4 * 255).round().astype(np.uint8)))
    od, cup = as_png(votes_od, 'drishtiGS_002_ODsegSoftmap.png'), as_png(votes_cup, 'drishtiGS_002_cupsegSoftmap.png')
    expected = {'any': np.where(votes_cup > 0, 2, votes_od > 0), 'majority': np.where(votes_cup >= 2, 2, votes_od >= 2),
                'all': np.where(votes_cup == 4, 2, votes_od == 4)}
    for rule, labels in expected.items():
        np.testing.assert_array_equal(read_drishti_mask(od, cup, rule), labels, err_msg=rule)
    assert (read_drishti_mask(od, cup) == 1).sum() == 36 - 4  # majority: 6x6 disc minus the 2x2 cup
    with pytest.raises(ValueError, match="rule='half'"): read_drishti_mask(od, cup, 'half')
    small = save(tmp_path/'small.png', Image.fromarray(np.zeros((10, 8), np.uint8)))
    with pytest.raises(ValueError, match='ODsegSoftmap.png is 10x10 but .*small.png is 8x10'): read_drishti_mask(od, small)


def test_lesion_masks(tmp_path):
    ex = np.zeros((30, 40), bool); ex[5:9, 20:30] = True
    path = save(tmp_path/'IDRiD_01_EX.tif', Image.fromarray(np.dstack([ex * 255, 0 * ex, 0 * ex]).astype(np.uint8)))
    masks = read_lesion_masks({'MA': None, 'EX': path, 'SE': None}, (30, 40, 3))
    assert list(masks) == ['MA', 'EX', 'SE']
    np.testing.assert_array_equal(masks['EX'], ex)
    for kind in ['MA', 'SE']: assert masks[kind].shape == (30, 40) and masks[kind].dtype == np.uint8 and not masks[kind].any()
    with pytest.raises(ValueError, match='the image is 41x30 but .*IDRiD_01_EX.tif is 40x30'):
        read_lesion_masks({'EX': path}, (30, 41))
    with pytest.raises(ImageReadError, match='IDRiD_01_HE.tif: no such file'):
        read_lesion_masks({'HE': tmp_path/'IDRiD_01_HE.tif'}, (30, 40))  # a path that is given must exist


def test_check_same_size_names_both():
    check_same_size(RGB, GRAY, 'a', 'b')
    check_same_size(RGB, (20, 30), 'a', 'b')
    with pytest.raises(ValueError, match=r'01_test.tif is 30x20 but 01_manual1.gif is 29x20 \(width x height\)'):
        check_same_size(RGB, GRAY[:, :29], '01_test.tif', '01_manual1.gif')


# ---------------------------------------------------------------- real data
def data_root(name):
    root = fundus_data_root(name)
    if root is None: pytest.skip(f'{name} not found: set FUNDUS_DATA to the shared data folder')
    return root


def test_drive_tif_and_gif_masks():
    tr = data_root('DRIVE')/'training'
    img = read_image(tr/'images/21_training.tif')
    fov, vessels = read_mask(tr/'mask/21_training_mask.gif'), read_mask(tr/'1st_manual/21_manual1.gif')
    assert img.shape == (584, 565, 3) and img.dtype == np.uint8
    for m in (fov, vessels):
        check_same_size(img, m, '21_training.tif', 'mask')
        assert set(np.unique(m)) == {0, 1}
    assert 0.6 < fov.mean() < 0.8 and 0.05 < vessels.mean() < 0.16
    assert vessels[fov == 0].mean() < 0.01  # vessels lie inside the FOV
    assert img[fov == 0, 0].mean() < 30 < img[fov == 1, 0].mean()


def test_drive_palette_second_observer():
    te = data_root('DRIVE')/'test'
    second, first = read_mask(te/'2nd_manual/01_manual2.gif'), read_mask(te/'1st_manual/01_manual1.gif')
    np.testing.assert_array_equal(read_mask(te/'2nd_manual/01_manual2.gif', 'label'), second)  # indices 0/1 = the colours
    dice = 2 * (first & second).sum() / (first.sum() + second.sum())
    assert 0.7 < dice < 0.9  # two observers agree, not perfectly


def test_stare_gzipped_ppm_and_labels():
    root = data_root('STARE')
    img, ah = read_image(root/'stare-images/im0001.ppm.gz'), read_mask(root/'labels-ah/im0001.ah.ppm.gz')
    assert img.shape == (605, 700, 3) and img.dtype == np.uint8
    check_same_size(img, ah, 'im0001.ppm.gz', 'im0001.ah.ppm.gz')
    assert set(np.unique(ah)) == {0, 1} and 0.05 < ah.mean() < 0.15


def test_odoc_refuge_encoded_mask():
    roi = data_root('ODOC_multidomain')/'Domain3/train/ROIs'
    img, labels = read_image(roi/'image/g0003.png'), read_mask(roi/'mask/g0003.png', 'refuge')
    check_same_size(img, labels, 'g0003.png', 'mask/g0003.png')
    assert set(np.unique(labels)) == {0, 1, 2}
    raw = np.asarray(Image.open(roi/'mask/g0003.png'))[..., 0]
    for level, label in [(255, 0), (128, 1), (0, 2)]: assert ((raw == level) == (labels == label)).all()
    disc, cup = labels > 0, labels == 2
    assert (labels == 0).mean() > 0.5 and cup.sum() < disc.sum()
    around_cup = cv2.dilate(cup.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert disc[around_cup].all()  # the cup sits inside the disc: no background touches it


def test_drions_lossy_jpeg_mask():
    root = data_root('DRIONS-DB')/'test'
    img, mask = read_image(root/'image/image_091.jpg'), read_mask(root/'groundtruth/image_091.jpg')
    check_same_size(img, mask, 'image_091.jpg', 'groundtruth/image_091.jpg')
    raw = np.asarray(Image.open(root/'groundtruth/image_091.jpg'))
    assert len(np.unique(raw)) > 2  # lossy: not exactly 0/255
    np.testing.assert_array_equal(mask, raw > 127)
    assert 0.01 < mask.mean() < 0.2
    with pytest.raises(ValueError, match='no disc rim'): read_mask(root/'groundtruth/image_091.jpg', 'refuge')  # not REFUGE-encoded
