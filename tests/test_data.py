"fundus_ssl.data on synthetic datasets written in the real layouts (read back by the readers) and on real data when FUNDUS_DATA is set."
import os, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from PIL import Image
from fundus_ssl.core import fundus_data_root
from fundus_ssl.io import read_image, read_mask
from fundus_ssl.synthetic import write_drive_like, write_eyepacs_like, write_odir_like, write_refuge_like
from fundus_ssl.datasets import read_drive, read_eyepacs, read_odir, read_refuge_segmentation
from fundus_ssl.data import *

torch.set_num_threads(1)


# ---- synthetic datasets, written once per session ----------------------------------------------------------------
@pytest.fixture(scope='session')
def root(tmp_path_factory): return tmp_path_factory.mktemp('synthetic')

@pytest.fixture(scope='session')
def drive_df(root): return read_drive(write_drive_like(root/'DRIVE', n_train=10, n_test=4, size=128))

@pytest.fixture(scope='session')
def eyepacs_df(root): return read_eyepacs(write_eyepacs_like(root/'EyePACS', n_patients=15, size=96))

@pytest.fixture(scope='session')
def odir_df(root):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return read_odir(write_odir_like(root/'ODIR', n_patients=12, size=96))

@pytest.fixture(scope='session')
def refuge_df(root): return read_refuge_segmentation(write_refuge_like(root/'REFUGE', n_glaucoma=2, n_normal=6, size=128))


# ---- classification ----------------------------------------------------------------------------------------------
def test_classification_targets(eyepacs_df):
    train = eyepacs_df[eyepacs_df.split == 'train']
    dls = classification_dls(eyepacs_df, 'dr_grade', size=48, bs=4, shuffle=False)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 48, 48) and xb.dtype == torch.float32
    # the labels are those of the rows, in order (no shuffling), as vocabulary indices
    rows = dls.train.items.iloc[:4]
    assert yb.tolist() == [list(dls.vocab).index(g) for g in rows.dr_grade]
    assert dls.train.n + dls.valid.n == len(train)
    ordinal = classification_dls(eyepacs_df, 'dr_grade', target='ordinal', size=48, bs=4, shuffle=False).one_batch()[1]
    assert ordinal.tolist() == [[float(g > t) for t in range(len(dls.vocab) - 1)] for g in rows.dr_grade]
    reg = classification_dls(eyepacs_df, 'dr_grade', target='regression', size=48, bs=4, shuffle=False).one_batch()[1]
    assert reg.tolist() == [float(g) for g in rows.dr_grade]

def test_normalisation_stats(eyepacs_df):
    "A batch of the validation split, denormalised with the stats given, equals the augmented pixels / 255."
    for stats in (IMAGENET_STATS, EYEPACS_STATS):
        dls = classification_dls(eyepacs_df, 'dr_grade', size=48, bs=4, stats=stats)
        xb, _ = dls.valid.one_batch()
        row = dls.valid.items.iloc[0]
        raw = fundus_augs(48, train=False)(image=read_image(row.image))['image']
        mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
        restored = xb[0].cpu() * std + mean
        assert torch.allclose(restored, torch.from_numpy(raw).permute(2, 0, 1).float() / 255, atol=1e-5)

def test_class_weights_balance(eyepacs_df):
    labels = eyepacs_df.dr_grade
    w = class_weights(labels, range(5))
    counts = labels.value_counts().reindex(range(5), fill_value=0)
    # weighted counts are equal across the classes present
    weighted = (w.numpy() * counts.to_numpy())[counts.to_numpy() > 0]
    assert np.allclose(weighted, weighted[0])

def test_multitask_tuple_target(eyepacs_df):
    df = eyepacs_df.assign(referable=(eyepacs_df.dr_grade >= 2).astype(int))
    dls = multitask_dls(df, ['dr_grade', 'referable'], size=48, bs=4, shuffle=False)
    xb, y1, y2 = dls.one_batch()
    rows = dls.train.items.iloc[:4]
    assert y1.tolist() == [list(df.dr_grade.drop_duplicates().sort_values()).index(g) for g in rows.dr_grade]
    assert y2.tolist() == rows.referable.tolist()
    titles = [dls.decode_batch((xb, y1, y2))[i][1:] for i in range(2)]
    assert all(a.startswith('dr_grade: ') and b.startswith('referable: ') for a, b in titles)

def test_multilabel(odir_df):
    cols = list('NDGCAHMO')
    dls = multilabel_dls(odir_df, cols, size=48, bs=4, shuffle=False)
    xb, yb = dls.one_batch()
    assert yb.tolist() == dls.train.items[cols].iloc[:4].astype(float).values.tolist()
    with pytest.raises(ValueError, match=r"these do not: \['label'\]"): multilabel_dls(odir_df)  # attrs include the text label


# ---- segmentation ------------------------------------------------------------------------------------------------
def test_vessel_segmentation(drive_df):
    dls = segmentation_dls(drive_df, size=64, bs=4)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4, 64, 64) and isinstance(yb, FundusMask)
    assert set(yb.unique().tolist()) == {0, 1}
    xv, yv = dls.valid.one_batch()
    row = dls.valid.items.iloc[0]
    # validation: the deterministic pipeline on the decoded image and mask, exactly
    ref = fundus_augs(64, train=False)(image=read_image(row.image), mask=read_mask(row['mask']))
    assert torch.equal(yv[0].cpu(), torch.from_numpy(ref['mask']).long())

def test_disc_cup(refuge_df):
    dls = segmentation_dls(refuge_df, size=64, bs=2)
    yb = dls.one_batch()[1]
    assert set(yb.unique().tolist()) == {0, 1, 2}
    assert dls.train.after_item.c == 3

def _square_pair(path:Path, i:int):
    "A fundus-like disc with a blue square and a mask of exactly that square: image and mask share geometry."
    img = np.zeros((120, 140, 3), np.uint8)
    yy, xx = np.ogrid[:120, :140]
    img[(yy - 60)**2 + (xx - 70)**2 < 55**2] = (190, 90, 40)
    mask = np.zeros((120, 140), np.uint8)
    top, left = 25 + i, 35 + 2 * i
    img[top:top+50, left:left+44] = (20, 60, 230); mask[top:top+50, left:left+44] = 255
    Image.fromarray(img).save(path/f'{i}.png'); Image.fromarray(mask).save(path/f'{i}_mask.png')
    return {'image': str(path/f'{i}.png'), 'mask': str(path/f'{i}_mask.png'), 'split': 'train'}

def test_training_augmentation_keeps_image_and_mask_aligned(tmp_path):
    df = pd.DataFrame([_square_pair(tmp_path, i) for i in range(6)])
    augs = (fundus_augs(96, rotate=30, scale=0.2, vflip=0.5, jitter=(0.1, 0.1, 0.1, 0)), fundus_augs(96, train=False))
    dls = segmentation_dls(df, encoding='binary', augs=augs, bs=5, stats=([0.]*3, [1.]*3))
    for _ in range(3):
        xb, yb = (t.as_subclass(torch.Tensor) for t in dls.one_batch())
        blue = xb[:, 2] > xb[:, 0]  # the square is the only blue-dominant region
        inside, mismatch = (yb == 1), (yb == 1) ^ blue
        agreement = 1 - mismatch.float().sum() / inside.float().sum()
        assert agreement > 0.9, agreement  # only interpolation at the square's edge may differ (3 px off: 0.7)

def test_training_is_random_validation_is_not(drive_df):
    dls = segmentation_dls(drive_df, size=48, bs=2, shuffle=False)
    assert not torch.equal(dls.train.one_batch()[0], dls.train.one_batch()[0])
    assert torch.equal(dls.valid.one_batch()[0], dls.valid.one_batch()[0])

def test_patches(drive_df):
    dls = segmentation_dls(drive_df, size=None, patch_size=32, bs=4)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 32, 32) and yb.shape == (4, 32, 32)
    xv, _ = dls.valid.one_batch()
    assert xv.shape[0] == 1 and all(s % 32 == 0 and s >= 96 for s in xv.shape[2:])  # whole image, native size

def test_workers(drive_df):
    dls = segmentation_dls(drive_df, size=48, bs=2, num_workers=1)
    assert sum(len(xb) for xb, _ in dls.train) == 2 * len(dls.train)


def test_idrid_lesion_column_with_absent_files(tmp_path):
    import layouts
    from fundus_ssl.datasets import read_idrid_segmentation
    df = read_idrid_segmentation(layouts.write_idrid_segmentation(tmp_path))  # 8x8 images; IDRiD_02 has no SE file
    with pytest.raises(ValueError, match="choose a lesion with `mask_col`"): segmentation_dls(df)
    fixed = fundus_augs(8, train=False, fov_crop=False)  # no random warp: exact masks
    dls = segmentation_dls(df, mask_col='mask_SE', augs=(fixed, fixed), bs=2, valid_split='test', shuffle=False)
    yb = dls.one_batch()[1]
    assert dls.train.items.id.tolist() == ['IDRiD_01', 'IDRiD_02'] and yb.sum((1, 2)).tolist() == [64, 0]
    assert dls.train.after_item.vocab == ['background', 'SE']

def test_drishti_soft_maps_read_together(tmp_path):
    import layouts
    from fundus_ssl.datasets import read_drishti_gs1
    df = read_drishti_gs1(layouts.write_drishti_gs1(tmp_path))  # disc and cup soft maps all 255: cup everywhere
    assert df.attrs['mask_encoding'] == 'drishti'
    dls = segmentation_dls(df, fov_crop=False, size=8, bs=2, valid_split='test')
    assert dls.valid.one_batch()[1].unique().tolist() == [2]
    assert len(verify_images(df, ['mask', 'mask_cup'])) == 0


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_empty_inputs(drive_df):
    with pytest.raises(ValueError, match='DataFrame is empty'): segmentation_dls(drive_df.iloc[:0])
    with pytest.raises(ValueError, match='train split is empty'): segmentation_dls(drive_df[drive_df.split == 'test'])
    with pytest.raises(ValueError, match='valid split is empty'): segmentation_dls(drive_df, valid_pct=0)
    with pytest.raises(ValueError, match='valid split is empty'): segmentation_dls(drive_df.iloc[:1])

def test_size_mismatch_names_both_files(drive_df, tmp_path):
    small = tmp_path/'small.gif'
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    df = drive_df.copy(); df['mask'] = str(small)
    with pytest.raises(ValueError, match=r'_training\.tif is \d+x\d+ but \S*small\.gif is 12x10'):
        segmentation_dls(df, size=32)

def test_corrupt_image(drive_df, tmp_path):
    corrupt = tmp_path/'corrupt.tif'; corrupt.write_bytes(b'II*\x00 truncated')
    df = drive_df.copy(); df.loc[df.split == 'train', 'image'] = str(corrupt)
    with pytest.raises(ValueError, match='corrupt.tif'): list(segmentation_dls(df, size=32).train)
    df = drive_df.copy(); df.loc[2, 'image'] = str(corrupt)
    bad = verify_images(df)
    assert bad.index.tolist() == [2] and 'corrupt.tif' in bad.error[2]
    with pytest.warns(UserWarning, match='skipped 1 unreadable rows'):
        dls = segmentation_dls(df, size=32, bs=2, skip_bad=True)
    assert dls.skipped.index.tolist() == [2]
    assert str(corrupt) not in set(dls.train.items.image) | set(dls.valid.items.image)
    assert sum(len(x) for x, _ in dls.valid) == len(dls.valid.items)

def test_fov_mask_of_another_size(drive_df, tmp_path):
    "A FOV mask that does not match its image is found by `verify_images`, with both names, like the other masks."
    small = tmp_path/'small_fov.gif'
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    df = drive_df.copy(); df.loc[3, 'fov'] = str(small)
    bad = verify_images(df)
    assert bad.index.tolist() == [3] and bad.error[3].endswith(f'{small} is 12x10 (width x height)')
    assert Path(df.image[3]).name in bad.error[3]
    with pytest.warns(UserWarning, match='skipped 1 unreadable rows'): dls = segmentation_dls(df, size=32, bs=2, skip_bad=True)
    assert dls.skipped.index.tolist() == [3]

def test_disc_cup_mask_in_another_encoding(refuge_df, tmp_path):
    "A disc mask stored 0/255 where the dataset uses REFUGE's 0/128/255 is refused, naming the file."
    df = refuge_df.copy()
    labels = read_mask(df['mask'][0], 'refuge')
    binary = tmp_path/'g0001_binary.bmp'
    Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8)).save(binary)  # disc white on black
    df.loc[0, 'mask'] = str(binary)
    bad = verify_images(df)
    assert bad.index.tolist() == [0] and 'g0001_binary.bmp: cup (0) pixels but no disc rim (128)' in bad.error[0]
    with pytest.raises(ValueError, match='g0001_binary.bmp: cup'):  # training meets it: an error naming it
        [b for dl in segmentation_dls(df, size=32, bs=2).loaders for b in dl]
    with pytest.warns(UserWarning, match='skipped 1 unreadable rows'): dls = segmentation_dls(df, size=32, bs=2, skip_bad=True)
    assert dls.skipped.index.tolist() == [0]

def test_deleted_manual_mask_is_left_out(tmp_path):
    "A training image whose manual was deleted: warned by the reader, then left out of training (counted), never all background."
    root = write_drive_like(tmp_path/'DRIVE', n_train=6, n_test=2, size=64)
    manual = next((root/'training/1st_manual').iterdir())
    manual.unlink()
    with pytest.warns(UserWarning, match='1 of 6 images have no mask'): df = read_drive(root)
    lost = df.image[df['mask'].isna() & (df.split == 'train')].tolist()
    assert len(lost) == 1
    with pytest.warns(UserWarning, match=r"1 of 6 train and valid images have no mask file in \['mask'\].*left out"):
        dls = segmentation_dls(df, size=32, bs=2)
    assert dls.no_mask.image.tolist() == lost
    used = set(dls.train.items.image) | set(dls.valid.items.image)
    assert lost[0] not in used and len(used) == 5
    with pytest.raises(ValueError, match='none of the 6 train and valid images has a mask file'):
        segmentation_dls(df.assign(mask=None), size=32)

def test_missing_labels(eyepacs_df):
    df = eyepacs_df.copy(); df['dr_grade'] = df.dr_grade.astype(float); df.loc[1, 'dr_grade'] = np.nan
    with pytest.raises(ValueError, match=f"'dr_grade' has 1 missing values, e.g. for image .*{Path(df.image[1]).name}"):
        classification_dls(df, 'dr_grade')

def test_small_train_split_lowers_batch_size(drive_df):
    df = drive_df[drive_df.split == 'train'].iloc[:4]
    with pytest.warns(UserWarning, match='fewer than bs=16'): dls = segmentation_dls(df, size=32, bs=16)
    assert len(dls.train) == 1


@pytest.mark.parametrize('bad', [dict(bs=0), dict(bs=-2), dict(size=0), dict(patch_size=0), dict(val_bs=0), dict(val_bs=-1)])
def test_sizes_checked_before_any_work(drive_df, eyepacs_df, bad):
    "A batch size or side that is not a positive int: an error naming it, before the rows are read (was ZeroDivisionError, `__len__() should return >= 0`, an albumentations error)."
    (name, value), = bad.items()
    msg = f'{name}={value}: expected a positive int'
    with pytest.raises(ValueError, match=msg): segmentation_dls(drive_df, **{'size': 32, 'bs': 2, **bad})
    with pytest.raises(ValueError, match=msg): fundus_dls(drive_df.iloc[:0], (FundusImageBlock(),), [None], **bad)  # not 'DataFrame is empty'
    if name in ('bs', 'size'):
        from fundus_ssl.pretrain import unlabeled_dls
        with pytest.raises(ValueError, match=msg): unlabeled_dls(eyepacs_df, **{'size': 32, 'bs': 2, **bad})
        with pytest.raises(ValueError, match=msg): unlabeled_dls(eyepacs_df.drop(columns='image'), **bad)  # before the column check


# ---- real data ---------------------------------------------------------------------------------------------------
def _need(name):
    path = fundus_data_root(name)
    if path is None: pytest.skip(f'{name}: set FUNDUS_DATA to a folder holding it')
    return path

def test_real_drive():
    df = read_drive(_need('DRIVE'))
    dls = segmentation_dls(df, codes=['background', 'vessel'], size=128, bs=4)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 128, 128)
    assert 0.05 < yb.float().mean() < 0.2  # vessels cover about 12% of a DRIVE FOV crop
    patches = segmentation_dls(df, valid_split='test', size=None, patch_size=128, bs=4)
    xv, yv = patches.valid.one_batch()
    assert xv.shape[2:] == (544, 544)  # DRIVE's FOV (about 540 px across), padded to a multiple of 32

def test_real_drive_patches_alignment():
    "Vessels are darker than their surroundings in the green channel: true under the patches' masks only if aligned."
    df = read_drive(_need('DRIVE'))
    dls = segmentation_dls(df, size=None, patch_size=96, bs=16, valid_split='test', stats=([0.]*3, [1.]*3),
                           augs=(fundus_augs(None, patch_size=96, color_p=0), fundus_augs(None, train=False, patch_size=96)))
    for _ in range(2):
        xb, yb = (t.as_subclass(torch.Tensor) for t in dls.one_batch())
        green = xb[:, 1:2]
        detail = (green - F.avg_pool2d(green, 15, stride=1, padding=7, count_include_pad=False))[:, 0]  # local contrast
        inside = xb[:, 1] > 0.05
        contrast = detail[(yb == 1) & inside].mean() / detail[inside].std()
        assert contrast < -0.9, contrast  # 20 batches: aligned -1.15 to -1.42; masks 4 px off -0.22 to -0.54; flipped 0

def test_real_retinamnist_arrays():
    from fundus_ssl.datasets import read_retinamnist
    df = read_retinamnist(_need('RetinaMNIST'))
    dls = classification_dls(df, size=28, fov_crop=False, bs=64)
    assert dls.train.n == 1080 and dls.valid.n == 120  # the shipped validation split
    assert dls.one_batch()[0].shape == (64, 3, 28, 28)

def test_real_odoc_disc_cup():
    from fundus_ssl.datasets import read_odoc_multidomain
    dls = segmentation_dls(read_odoc_multidomain(_need('ODOC_multidomain')), size=96, bs=2)
    assert set(dls.one_batch()[1].unique().tolist()) == {0, 1, 2}

def test_real_eyepacs_stats_are_rgb():
    srcs = sorted((_need('EyePACS')/'sample').glob('*.jpeg'))
    mean, std = channel_stats(srcs, size=448)
    assert np.allclose(mean, EYEPACS_STATS[0], atol=0.015) and np.allclose(std, EYEPACS_STATS[1], atol=0.015)
    assert not np.allclose(mean, EYEPACS_STATS[0][::-1], atol=0.05)  # the BGR order of the SWCL code does not fit
