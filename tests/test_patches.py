"Heavier checks of fundus_ssl.patches: geometry and mirroring, CAM scores, zeroing, idempotence and resuming of the CSV."
import warnings
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fundus_ssl.core import fundus_data_root
from fundus_ssl.datasets import read_odir, read_eyepacs, MissingFilesWarning
from fundus_ssl.synthetic import write_odir_like, write_eyepacs_like
from fundus_ssl.pseudolabel import pseudo_labeler
import fundus_ssl.patches as patches_mod
from fundus_ssl.patches import (PATCH_POSITIONS, MIRRORED_POSITION, CSV_NAME, patch_origins, five_patches, patch_image,
                                score_maps, class_activation_maps, build_patch_dataset, read_patch_csv)

torch.set_num_threads(1)
QUADRANTS = {'tl': (slice(0, 32), slice(0, 32)), 'tr': (slice(0, 32), slice(32, 64)),
             'bl': (slice(32, 64), slice(0, 32)), 'br': (slice(32, 64), slice(32, 64))}

def marked_fundus(quadrant:str, size:int=64) -> np.ndarray:
    "A gray disc filling a square, with a green mark in the middle of one quadrant."
    yy, xx = np.mgrid[:size, :size] / size
    img = np.zeros((size, size, 3), np.uint8)
    img[(yy - 0.5)**2 + (xx - 0.5)**2 < 0.26] = 120
    rows, cols = QUADRANTS[quadrant]
    img[rows.start + 10:rows.start + 20, cols.start + 10:cols.start + 22, 1] = 250
    return img

@pytest.mark.parametrize('quadrant', ['tl', 'tr', 'bl', 'br'])
@pytest.mark.parametrize('eye', ['left', 'right'])
def test_marked_quadrant_lands_in_its_patch(tmp_path, quadrant, eye):
    "A left eye's mark stays in its quadrant's patch; a right eye's lands in the mirrored position, mirrored."
    path = tmp_path/'img.png'
    Image.fromarray(marked_fundus(quadrant)).save(path)
    expected = quadrant if eye == 'left' else MIRRORED_POSITION[quadrant]
    marked = [p for p in PATCH_POSITIONS if p != 'c' and (patch_image(path, eye, p, 64, 32)[..., 1] == 250).any()]
    assert marked == [expected]
    got = patch_image(path, eye, expected, 64, 32)
    unaligned = patch_image(path, 'left', quadrant, 64, 32)
    assert np.array_equal(got, unaligned[:, ::-1] if eye == 'right' else unaligned)

def test_right_eye_equals_official_crop_then_flip():
    "At SWCL's sizes (448 / 224): crop the unmirrored right eye at p, flip, call it MIRRORED_POSITION[p]."
    x = torch.randint(0, 255, (3, 448, 448), dtype=torch.uint8)
    ours = five_patches(x, 'right', 224)
    for p, (t, l) in patch_origins(448, 224).items():
        assert torch.equal(ours[MIRRORED_POSITION[p]], x[:, t:t + 224, l:l + 224].flip(-1))

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('patches')
    odir = read_odir(write_odir_like(root/'ODIR', n_patients=8, size=64, seed=3))
    pool = read_eyepacs(write_eyepacs_like(root/'EyePACS', n_patients=3, size=64, seed=4))
    torch.manual_seed(0)
    model = pseudo_labeler('resnet18').eval()
    pool = pool.assign(pseudo_label=['normal', 'abnormal'] * (len(pool) // 2) + ['normal'] * (len(pool) % 2))
    return root, pd.concat([odir, pool], ignore_index=True), model

def test_cam_scores_in_unit_range_and_zero_for_normal_images(sets, tmp_path):
    _, images, model = sets
    df = build_patch_dataset(images, model, tmp_path/'a', size=64, patch_size=32, bs=5)
    assert len(df) == 5 * len(images) and df.score.between(0, 1).all()
    normal = images.image[images.label == 'normal']
    assert len(normal) and (df[df.image.isin(normal)].score == 0).all()
    assert (df[~df.image.isin(normal)].score > 0).all()  # pool images keep their CAM scores (SWCL)
    assert list(df.groupby('image', sort=False).position.apply(list).iloc[0]) == list(PATCH_POSITIONS)
    # with propagated labels, pool images predicted normal are zeroed too
    both = build_patch_dataset(images, model, tmp_path/'b', size=64, patch_size=32, zero_normal='label+propagated')
    guessed_normal = images.image[images.label.isna() & (images.pseudo_label == 'normal')]
    assert len(guessed_normal) and (both[both.image.isin(guessed_normal)].score == 0).all()
    maps = score_maps(model, torch.rand(2, 3, 64, 64))
    assert maps.min() >= 0 and maps.max() <= 1 and torch.allclose(maps.sum(1), torch.ones(2, 64, 64), atol=1e-5)

def test_cams_are_the_logits_decomposed(sets):
    _, _, model = sets
    x = torch.rand(3, 3, 64, 64)
    cams = class_activation_maps(model, x, upsample=False)
    with torch.no_grad(): logits = model(x)
    assert torch.allclose(cams.mean((2, 3)) + model.head.bias, logits, atol=1e-4)

def _same(a:pd.DataFrame, b:pd.DataFrame):
    assert a.drop(columns='score').equals(b.drop(columns='score'))
    assert np.allclose(a.score, b.score, atol=1e-6)

def test_idempotent_and_resumable(sets, tmp_path):
    _, images, model = sets
    once = build_patch_dataset(images, model, tmp_path/'once', size=64, patch_size=32, save_patches=True)
    csv = tmp_path/'once'/CSV_NAME
    before = csv.read_bytes()
    again = build_patch_dataset(images, model, tmp_path/'once', size=64, patch_size=32, save_patches=True)
    assert again.attrs['n_new_images'] == 0 and csv.read_bytes() == before
    assert len(list((tmp_path/'once'/'patches').glob('*.png'))) == len(once)
    # in two runs: the second appends only the new images
    build_patch_dataset(images.iloc[:5], model, tmp_path/'two', size=64, patch_size=32)
    two = build_patch_dataset(images, model, tmp_path/'two', size=64, patch_size=32)
    assert two.attrs['n_new_images'] == len(images) - 5
    _same(two.assign(patch=''), once.assign(patch=''))

def test_interrupted_write_is_detected_and_redone(sets, tmp_path, monkeypatch):
    _, images, model = sets
    once = build_patch_dataset(images, model, tmp_path/'once', size=64, patch_size=32)
    calls, append = {'n': 0}, patches_mod._append
    def crash_mid_write(path, rows):  # the second batch's write stops half way through a line
        calls['n'] += 1
        if calls['n'] == 2:
            with open(path, 'a') as f: f.write(rows.to_csv(index=False, header=False)[:150])
            raise KeyboardInterrupt
        append(path, rows)
    monkeypatch.setattr(patches_mod, '_append', crash_mid_write)
    with pytest.raises(KeyboardInterrupt): build_patch_dataset(images, model, tmp_path/'run', size=64, patch_size=32, bs=4)
    monkeypatch.setattr(patches_mod, '_append', append)
    with pytest.warns(UserWarning, match='half-written end'):
        resumed = build_patch_dataset(images, model, tmp_path/'run', size=64, patch_size=32, bs=4)
    assert resumed.attrs['n_new_images'] == len(images) - 4
    _same(resumed, once)

def test_damage_that_is_not_an_interruption_is_an_error(sets, tmp_path):
    _, images, model = sets
    build_patch_dataset(images.iloc[:4], model, tmp_path/'x', size=64, patch_size=32)
    csv = tmp_path/'x'/CSV_NAME
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text(''.join(lines[:3] + lines[4:]))  # a row of the first image gone
    with pytest.raises(ValueError, match='not an interrupted write'): read_patch_csv(csv)
    with pytest.raises(ValueError, match='other settings'):
        build_patch_dataset(images, model, tmp_path/'x', size=64, patch_size=16)
    fresh = build_patch_dataset(images.iloc[:4], model, tmp_path/'x', size=64, patch_size=32, overwrite=True)
    assert len(fresh) == 20

def test_real_odir_patches(tmp_path):
    root = fundus_data_root('ODIR-5K')
    if root is None: pytest.skip('FUNDUS_DATA/ODIR-5K not available')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingFilesWarning)
        odir = read_odir(root)
    rows = pd.concat([odir[odir.eye == 'left'].iloc[:2], odir[odir.eye == 'right'].iloc[:2]])
    df = build_patch_dataset(rows, pseudo_labeler('resnet18'), tmp_path, size=128, patch_size=64, save_patches=True)
    assert len(df) == 20 and df.score.between(0, 1).all()
    assert (df[df.image.isin(rows.image[rows.label == 'normal'])].score == 0).all()
    r = df[df.eye == 'right'].iloc[1]  # a right eye's tr patch: its unmirrored tl, flipped
    saved = np.array(Image.open(tmp_path/r.patch))
    assert r.position == 'tr' and np.array_equal(saved, patch_image(r.image, 'left', 'tl', 128, 64)[:, ::-1])
