"fundus_ssl.synthetic: determinism, label logic, exact masks, mirrored anatomy, speed (with FUNDUS_TIMING=1), and the on-disk layouts (checked against the real datasets when FUNDUS_DATA is set)."
import csv, os, time
from pathlib import Path
import numpy as np, pytest, cv2
from PIL import Image
from fundus_ssl.core import fundus_data_root
from fundus_ssl.synthetic import *
from fundus_ssl.synthetic import vessel_tree, _geometry

# Speed is measured only when asked (FUNDUS_TIMING=1): no test of the suite may depend on how fast or busy the machine is.
timing = pytest.mark.skipif(not os.environ.get('FUNDUS_TIMING'), reason='measures speed: set FUNDUS_TIMING=1 to run it')

SEEDS = range(24)

def files(root): return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file() and 'ground_truth' not in p.parts)

# ---- the generator -----------------------------------------------------------------------------------------------
def test_same_seed_same_eye():
    a, b = make_fundus(4, dr_grade=3, dme_risk=2, amd=1), make_fundus(4, dr_grade=3, dme_risk=2, amd=1)
    for k in ('image', 'fov', 'vessels', 'disc', 'cup'): assert np.array_equal(a[k], b[k]), k
    for k in LESION_KINDS:
        assert np.array_equal(a['lesions'][k], b['lesions'][k]) and np.array_equal(a['lesion_table'][k], b['lesion_table'][k])
    assert a['labels'] == b['labels']
    assert not np.array_equal(make_fundus(5)['image'], make_fundus(6)['image'])

def test_contract_types():
    ex = make_fundus(0, size=128)
    assert ex['image'].shape == (128, 128, 3) and ex['image'].dtype == np.uint8
    for k in ('fov', 'vessels', 'disc', 'cup'): assert ex[k].shape == (128, 128) and ex[k].dtype == bool
    assert set(ex['lesions']) == set(LESION_KINDS)
    assert all(m.dtype == np.int32 and m.shape == (128, 128) for m in ex['lesions'].values())
    assert set(ex['labels']) == {'dr_grade', 'dme_risk', 'glaucoma', 'amd', 'eye', 'patient', 'cdr'}
    assert ex['labels']['patient'] == 0 and make_fundus(0, patient=77)['labels']['patient'] == 77

def test_fixed_labels_keep_the_anatomy():
    "The four random streams are independent: fixing labels changes the lesions, not the vessels, disc or FOV."
    base = make_fundus(8)
    for kw in (dict(dr_grade=0), dict(dr_grade=4, dme_risk=2), dict(amd=1)):
        other = make_fundus(8, **kw)
        for k in ('vessels', 'disc', 'fov'): assert np.array_equal(base[k], other[k]), (kw, k)

def test_grade_0_has_no_lesions():
    for s in SEEDS:
        ex = make_fundus(s, dr_grade=0, amd=0)
        assert all(not m.any() for m in ex['lesions'].values()) and all(len(t) == 0 for t in ex['lesion_table'].values())
        assert ex['labels']['dme_risk'] == 0

def test_grade_1_is_microaneurysms_only():
    for s in SEEDS:
        ex = make_fundus(s, dr_grade=1)
        present = [k for k in DR_LESIONS if len(ex['lesion_table'][k])]
        assert present == ['microaneurysms'], (s, present)
        assert ex['lesions']['microaneurysms'].max() == len(ex['lesion_table']['microaneurysms'])

def test_grade_2_3_4_rules():
    for s in SEEDS:
        for g in (2, 3, 4):
            ex = make_fundus(s, dr_grade=g)
            t, centre = ex['lesion_table'], ex['geometry']['fov_centre']
            per_q = np.bincount(quadrants(t['haemorrhages'], centre), minlength=4) if len(t['haemorrhages']) else np.zeros(4)
            if g == 2:
                assert len(t['haemorrhages']) + len(t['hard_exudates']) + len(t['cotton_wool_spots']) > 0
                assert not (per_q >= SEVERE_HE_PER_QUADRANT).all() and not len(t['neovascularisation'])
            if g == 3: assert (per_q >= SEVERE_HE_PER_QUADRANT).all() and not len(t['neovascularisation'])
            if g == 4: assert len(t['neovascularisation']) > 0 and ex['lesions']['neovascularisation'].any()

def test_labels_are_read_back_from_the_lesions():
    "Drawn at random, the labels always equal what the grading rules make of the lesions drawn."
    grades = set()
    for s in range(60):
        ex = make_fundus(s)
        l, g, t = ex['labels'], ex['geometry'], ex['lesion_table']
        grades.add(l['dr_grade'])
        assert dr_grade_from_lesions(t, g['fov_centre']) == l['dr_grade']
        assert dme_risk_from_exudates(t['hard_exudates'], g['fovea'], g['disc_diameter']) == l['dme_risk']
        assert l['glaucoma'] == int(l['cdr'] >= GLAUCOMA_CDR)
        assert bool(len(t['drusen'])) == bool(l['amd'])
    assert grades == {0, 1, 2, 3, 4}

def test_dme_risk_from_exudate_positions():
    for s in range(12):
        for risk in (1, 2):
            ex = make_fundus(s, dr_grade=2, dme_risk=risk)
            t, g = ex['lesion_table']['hard_exudates'], ex['geometry']
            edge = np.hypot(*(t[:, :2] - g['fovea']).T) - t[:, 2]
            assert len(t) > 0
            assert (edge.min() <= g['disc_diameter']) == (risk == 2), (s, risk, edge.min() / g['disc_diameter'])
        assert not make_fundus(s, dr_grade=3, dme_risk=0)['lesions']['hard_exudates'].any()

def test_glaucoma_from_cdr():
    for cdr, label in ((0.3, 0), (0.59, 0), (0.6, 1), (0.8, 1)): assert make_fundus(1, cdr=cdr)['labels']['glaucoma'] == label
    assert make_fundus(1, cdr=0.65, glaucoma_cdr=0.7)['labels']['glaucoma'] == 0
    for cdr in (0.3, 0.5, 0.7, 0.85):
        ex = make_fundus(2, cdr=cdr, size=512)
        measured = ex['cup'].any(1).sum() / ex['disc'].any(1).sum()          # vertical cup-to-disc ratio of the masks
        assert abs(measured - cdr) < 0.04, (cdr, measured)
        assert not (ex['cup'] & ~ex['disc']).any()

def test_instance_maps_are_exact():
    "Every lesion of the tables has pixels in its map, ids 1..n; kinds never overlap; only new vessels cover vessels."
    for s in range(12):
        ex = make_fundus(s, dr_grade=2 + s % 3, dme_risk=s % 3, amd=1)
        seen = np.zeros(ex['fov'].shape, int)
        for k in LESION_KINDS:
            m = ex['lesions'][k]
            assert np.array_equal(np.unique(m[m > 0]), np.arange(1, len(ex['lesion_table'][k]) + 1)), (s, k)
            assert not (m > 0)[~ex['fov']].any()
            if k != 'neovascularisation': assert not (m > 0)[ex['vessels']].any()
            seen += m > 0
        assert seen.max() <= 1

def test_lesion_sizes_span_small_to_large():
    ex = make_fundus(3, dr_grade=3, size=256)
    areas = {k: np.bincount(ex['lesions'][k].ravel())[1:] for k in ('microaneurysms', 'haemorrhages')}
    assert areas['microaneurysms'].max() <= 12 and areas['haemorrhages'].max() >= 40

def test_vessels_darker_than_their_surroundings():
    "The mask agrees with the image: on the green channel, vessel pixels are darker than the background around them."
    for s in range(10):
        ex = make_fundus(s, dr_grade=0)
        green, v = ex['image'][..., 1].astype(float), ex['vessels']
        ring = cv2.dilate(v.view(np.uint8), np.ones((7, 7), np.uint8)).view(bool) & ~v & ex['fov'] & ~ex['disc']
        inside = v & ~ex['disc']
        assert green[inside].mean() < 0.85 * green[ring].mean(), s
        assert green[ex['disc']].mean() > green[ex['fov'] & ~ex['disc']].mean()
        assert ex['image'][~ex['fov']].max() == 0
        assert 0.04 < v[ex['fov']].mean() < 0.2                             # a plausible vessel density

def test_right_eye_mirrors_the_left():
    for s in range(6):
        l, r = make_fundus(s, eye='left', dr_grade=s % 5), make_fundus(s, eye='right', dr_grade=s % 5)
        for k in ('image', 'fov', 'vessels', 'disc', 'cup'): assert np.array_equal(r[k], l[k][:, ::-1]), k
        for k in LESION_KINDS: assert np.array_equal(r['lesions'][k], l['lesions'][k][:, ::-1])
        size = l['image'].shape[1]
        assert r['geometry']['disc_centre'][0] == pytest.approx(size - 1 - l['geometry']['disc_centre'][0])
        # the disc is nasal: left of the fovea in a left eye, right of it in a right eye
        assert l['geometry']['disc_centre'][0] < l['geometry']['fovea'][0]
        assert r['geometry']['disc_centre'][0] > r['geometry']['fovea'][0]
        ys, xs = np.nonzero(r['disc']); assert xs.mean() > size / 2
        assert r['labels']['eye'] == 'right' and r['labels']['dr_grade'] == l['labels']['dr_grade']

def test_calibre_drops_at_every_branching():
    "Consecutive pieces of one vessel (sharing a point) get thinner; more tortuosity, more winding vessels."
    geo = _geometry(np.random.default_rng(0), 256)
    pieces = vessel_tree(np.random.default_rng(0), geo)
    joined = [(p, q) for p, q in zip(pieces, pieces[1:]) if p[0][-1] == q[0][0] and p[2] == q[2]]
    assert len(joined) > 20 and all(q[1] < p[1] for p, q in joined)
    assert max(p[1] for p in pieces) == pytest.approx(0.11 * geo['disc_diameter'])
    def winding(t):
        zs = [z for z, _, _ in vessel_tree(np.random.default_rng(1), geo, tortuosity=t) if len(z) > 20]
        return np.mean([np.abs(np.diff(z)).sum() / abs(z[-1] - z[0]) for z in zs])
    assert winding(0) < winding(1) < winding(2.5)

def test_patients_have_correlated_eyes():
    pats = [make_patient(p, size=96) for p in range(60)]
    g = np.array([[p[e]['labels']['dr_grade'] for e in EYES] for p in pats])
    cdr = np.array([[p[e]['labels']['cdr'] for e in EYES] for p in pats])
    assert np.corrcoef(g.T)[0, 1] > 0.6 and np.corrcoef(cdr.T)[0, 1] > 0.8
    assert all(p['left']['labels']['patient'] == i == p['right']['labels']['patient'] for i, p in enumerate(pats))
    assert all(p['left']['labels']['eye'] == 'left' and p['right']['labels']['eye'] == 'right' for p in pats)
    assert not np.array_equal(pats[0]['left']['image'][:, ::-1], pats[0]['right']['image'])
    assert not np.array_equal(make_patient(0, size=96, seed=1)['left']['image'], pats[0]['left']['image'])
    forced = make_patient(5, size=96, dr_grade=4, dme_risk=2)
    assert [forced[e]['labels']['dr_grade'] for e in EYES] == [4, 4]

def test_bad_arguments_are_named():
    for kw, msg in ((dict(eye='both'), "eye must be 'left' or 'right'"), (dict(dr_grade=5), 'dr_grade must be'),
                    (dict(dme_risk=3), 'dme_risk must be'), (dict(dr_grade=1, dme_risk=2), 'dr_grade >= 2'),
                    (dict(cdr=0.95), 'cdr must be'), (dict(amd=2), 'amd must be'), (dict(size=32), 'size must be')):
        with pytest.raises(ValueError, match=msg): make_fundus(0, **kw)

@timing
def test_speed():
    "Far above what the notebook's figure needs; a 4x margin under the >= 100 images/s target for loaded CI machines."
    for s in range(5): make_fundus(s)
    t = time.process_time()
    for s in range(100): make_fundus(s)
    assert 100 / (time.process_time() - t) > 25

# ---- ground truth and writers ------------------------------------------------------------------------------------
def test_ground_truth_round_trip(tmp_path):
    ex = make_fundus(9, dr_grade=4, dme_risk=2, amd=1)
    gt = load_ground_truth(save_ground_truth(tmp_path / 'g.npz', ex))
    for k in ('fov', 'vessels', 'disc', 'cup'): assert np.array_equal(gt[k], ex[k])
    for k in LESION_KINDS:
        assert np.array_equal(gt['lesions'][k], ex['lesions'][k]) and gt['lesions'][k].dtype == np.int32
        assert np.array_equal(gt['lesion_table'][k], ex['lesion_table'][k])
    assert gt['labels'] == ex['labels'] and gt['geometry']['disc_diameter'] == pytest.approx(ex['geometry']['disc_diameter'])
    with pytest.raises(FileNotFoundError, match='nope.npz'): load_ground_truth(tmp_path / 'nope.npz')

@timing
def test_drive_like_speed(tmp_path):
    t = time.perf_counter()
    write_drive_like(tmp_path / 'DRIVE')
    assert time.perf_counter() - t < 20                                    # 1-2 s on an idle core

def test_drive_like_names_formats(tmp_path):
    root = write_drive_like(tmp_path / 'DRIVE')
    expect = sorted([f'training/{d}/{i}_{s}' for i in range(21, 41) for d, s in
                     (('images', 'training.tif'), ('1st_manual', 'manual1.gif'), ('mask', 'training_mask.gif'))] +
                    [f'test/{d}/{i:02d}_{s}' for i in range(1, 21) for d, s in
                     (('images', 'test.tif'), ('1st_manual', 'manual1.gif'), ('2nd_manual', 'manual2.gif'), ('mask', 'test_mask.gif'))])
    assert files(root) == expect
    tif = Image.open(root / 'training/images/21_training.tif')
    assert (tif.format, tif.mode, tif.info.get('compression')) == ('TIFF', 'RGB', 'tiff_lzw')
    gt = load_ground_truth(root / 'ground_truth/training/images/21_training.npz')
    m1, fov = Image.open(root / 'training/1st_manual/21_manual1.gif'), Image.open(root / 'training/mask/21_training_mask.gif')
    assert (m1.mode, fov.mode) == ('L', 'L')
    assert np.array_equal(np.asarray(m1) == 255, gt['vessels']) and np.array_equal(np.asarray(fov) == 255, gt['fov'])
    m2 = Image.open(root / 'test/2nd_manual/01_manual2.gif')
    v1 = np.asarray(Image.open(root / 'test/1st_manual/01_manual1.gif')) > 0
    assert m2.mode == 'P' and set(np.unique(np.asarray(m2))) == {0, 1}
    assert ((np.asarray(m2) == 1) & ~v1).sum() == 0 and (np.asarray(m2) == 1).sum() < v1.sum()   # a stricter observer
    few = write_drive_like(tmp_path / 'few', n_train=2, n_test=1, size=64)
    assert [f for f in files(few) if 'images' in f] == ['test/images/01_test.tif', 'training/images/21_training.tif', 'training/images/22_training.tif']
    with pytest.raises(ValueError, match='n_test must be 0-20'): write_drive_like(tmp_path / 'x', n_test=21)

def test_eyepacs_like(tmp_path):
    root = write_eyepacs_like(tmp_path / 'EyePACS', n_patients=4, size=64, n_test_patients=2)
    rows = list(csv.reader(open(root / 'trainLabels.csv', newline='')))
    assert rows[0] == ['image', 'level'] and len(rows) == 9
    assert files(root) == sorted(['trainLabels.csv', 'retinopathy_solution.csv'] + [f'train/{r[0]}.jpeg' for r in rows[1:]] +
                                 [f'test/{r[0]}.jpeg' for r in list(csv.reader(open(root / 'retinopathy_solution.csv')))[1:]])
    pids = [int(r[0].split('_')[0]) for r in rows[1:]]
    assert pids == sorted(pids) and pids[0] >= 10 and [r[0].split('_')[1] for r in rows[1:3]] == ['left', 'right']
    for name, level in rows[1:]: assert load_ground_truth(root / f'ground_truth/train/{name}.npz')['labels']['dr_grade'] == int(level)
    sol = list(csv.reader(open(root / 'retinopathy_solution.csv', newline='')))
    assert sol[0] == ['image', 'level', 'Usage'] and {r[2] for r in sol[1:]} <= {'Public', 'Private'} and len(sol) == 5
    assert b'\r\n' not in (root / 'trainLabels.csv').read_bytes()

def test_idrid_grading_like(tmp_path):
    root = write_idrid_grading_like(tmp_path / 'IDRiD', n_train=3, n_test=2, size=64)
    g = 'B. Disease Grading'
    assert files(root) == sorted([f'{g}/1. Original Images/a. Training Set/IDRiD_00{i}.jpg' for i in (1, 2, 3)] +
                                 [f'{g}/1. Original Images/b. Testing Set/IDRiD_00{i}.jpg' for i in (1, 2)] +
                                 [f'{g}/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv',
                                  f'{g}/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv'])
    rows = list(csv.reader(open(root / g / '2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv', newline='')))
    assert rows[0][:3] == ['Image name', 'Retinopathy grade', 'Risk of macular edema ']
    for name, grade, risk, *_ in rows[1:]:
        lab = load_ground_truth(root / f'ground_truth/{g}/1. Original Images/a. Training Set/{name}.npz')['labels']
        assert (lab['dr_grade'], lab['dme_risk']) == (int(grade), int(risk))

def test_refuge_like(tmp_path):
    root = write_refuge_like(tmp_path / 'REFUGE', n_glaucoma=2, n_normal=3, size=64)
    assert files(root) == sorted([f'Annotation-Training400/Disc_Cup_Masks/Glaucoma/g000{i}.bmp' for i in (1, 2)] +
                                 [f'Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma/n000{i}.bmp' for i in (1, 2, 3)] +
                                 [f'REFUGE-Training400/Training400/Glaucoma/g000{i}.jpg' for i in (1, 2)] +
                                 [f'REFUGE-Training400/Training400/Non-Glaucoma/n000{i}.jpg' for i in (1, 2, 3)])
    for folder, name, glaucoma in (('Glaucoma', 'g0002', 1), ('Non-Glaucoma', 'n0003', 0)):
        bmp = Image.open(root / f'Annotation-Training400/Disc_Cup_Masks/{folder}/{name}.bmp')
        gt = load_ground_truth(root / f'ground_truth/REFUGE-Training400/Training400/{folder}/{name}.npz')
        assert (bmp.format, bmp.mode) == ('BMP', 'L') and gt['labels']['glaucoma'] == glaucoma
        m = np.asarray(bmp)
        assert np.array_equal(m == 0, gt['cup']) and np.array_equal(m == 128, gt['disc'] & ~gt['cup']) and np.array_equal(m == 255, ~gt['disc'])

def test_odir_like(tmp_path):
    root = write_odir_like(tmp_path / 'ODIR-5K', n_patients=12, size=64)
    raw = (root / 'full_df.csv').read_bytes()
    assert raw.count(b'\r\n') == raw.count(b'\n')                          # CRLF like the Kaggle file
    rows = list(csv.DictReader(open(root / 'full_df.csv', newline='', encoding='utf-8')))
    assert list(rows[0]) == ODIR_COLUMNS
    assert files(root) == sorted(['full_df.csv'] + [f"preprocessed_images/{r['filename']}" for r in rows])
    eyes = [r['filename'].split('_')[1] for r in rows]
    assert eyes == sorted(eyes, reverse=True)                              # right-eye rows first, then left
    for r in rows:
        pid, eye = r['filename'][:-4].split('_')
        assert (r['ID'], r[f'{eye.capitalize()}-Fundus']) == (pid, r['filename'])
        gt = load_ground_truth(root / f"ground_truth/preprocessed_images/{r['filename'][:-4]}.npz")
        kws = r[f'{eye.capitalize()}-Diagnostic Keywords'].split('，')
        assert kws == [k for k, _ in odir_diagnosis(gt)] and r['labels'] == odir_diagnosis(gt)[0][1]
        assert r['target'] == str([int(l == r['labels']) for l in 'NDGCAHMO'])
        assert (r['D'] == '1') >= (gt['labels']['dr_grade'] > 0) and (r['G'] == '1') >= bool(gt['labels']['glaucoma'])
        assert (r['N'] == '1') == (r['Left-Diagnostic Keywords'] == r['Right-Diagnostic Keywords'] == 'normal fundus')
        assert r['N'] == '1' or kws != ['normal fundus']                   # no row for a normal eye of an ill patient
        assert r['filepath'] == f"{ODIR_KAGGLE_DIR}/{r['filename']}"

def test_readers_read_the_synthetic_layouts(tmp_path):
    "The dataset readers (when present) read every layout, with the labels of the ground truth."
    D = pytest.importorskip('fundus_ssl.datasets')
    df = D.read_drive(write_drive_like(tmp_path / 'DRIVE', 2, 2, size=64))
    assert len(df) == 4 and df.mask2.notna().sum() == 2
    df = D.read_eyepacs(write_eyepacs_like(tmp_path / 'EyePACS', 3, size=64))
    assert all(load_ground_truth(tmp_path / f'EyePACS/ground_truth/train/{Path(p).stem}.npz')['labels']['dr_grade'] == g
               for p, g in zip(df.image, df.dr_grade))
    df = D.read_idrid_grading(write_idrid_grading_like(tmp_path / 'IDRiD', 3, 1, size=64))
    assert len(df) == 4 and set(df.split) == {'train', 'test'}
    df = D.read_refuge_segmentation(write_refuge_like(tmp_path / 'REFUGE', 1, 2, size=64))
    assert df.glaucoma.tolist() == [1, 0, 0]
    df = D.read_odir(write_odir_like(tmp_path / 'ODIR', 5, size=64))
    assert len(df) == len(list((tmp_path / 'ODIR/preprocessed_images').iterdir()))

# ---- the real layouts, when the data is here ---------------------------------------------------------------------
def test_drive_like_matches_the_real_drive(tmp_path):
    real = fundus_data_root('DRIVE')
    if real is None: pytest.skip('FUNDUS_DATA/DRIVE not available')
    ours = write_drive_like(tmp_path / 'DRIVE', size=64)
    assert files(ours) == files(real)
    for rel in ('training/1st_manual/21_manual1.gif', 'training/mask/21_training_mask.gif', 'test/2nd_manual/01_manual2.gif'):
        a, b = Image.open(real / rel), Image.open(ours / rel)
        assert (a.format, a.mode, sorted(np.unique(np.asarray(a)))) == (b.format, b.mode, sorted(np.unique(np.asarray(b)))), rel
    assert Image.open(real / 'training/images/21_training.tif').info.get('compression') == \
           Image.open(ours / 'training/images/21_training.tif').info.get('compression')

def test_odir_like_matches_the_real_csv(tmp_path):
    real = fundus_data_root('ODIR-5K')
    if real is None: pytest.skip('FUNDUS_DATA/ODIR-5K not available')
    ours = write_odir_like(tmp_path / 'ODIR-5K', n_patients=8, size=64)
    r_raw, o_raw = (p.joinpath('full_df.csv').read_bytes() for p in (real, ours))
    assert r_raw.split(b'\r\n')[0] == o_raw.split(b'\r\n')[0]
    r_rows = list(csv.DictReader(open(real / 'full_df.csv', newline='', encoding='utf-8')))
    o_rows = list(csv.DictReader(open(ours / 'full_df.csv', newline='', encoding='utf-8')))
    prefix = lambda r: r['filepath'].rsplit('/', 1)[0]
    assert {prefix(r) for r in r_rows} == {prefix(r) for r in o_rows}
    assert {r['labels'] for r in o_rows} <= {r['labels'] for r in r_rows} | {'A', 'D', 'G', 'O', 'N'}
    real_kw = {k for r in r_rows for c in ('Left-Diagnostic Keywords', 'Right-Diagnostic Keywords') for k in r[c].split('，')}
    for kw in ('normal fundus', 'moderate non proliferative retinopathy', 'mild nonproliferative retinopathy', 'glaucoma',
               'drusen', 'dry age-related macular degeneration'): assert kw in real_kw
    for r in r_rows[:50] + o_rows: assert r['target'] == str([int(l == r['labels']) for l in 'NDGCAHMO'])

def test_eyepacs_like_matches_the_real_csv(tmp_path):
    real = fundus_data_root('EyePACS')
    if real is None: pytest.skip('FUNDUS_DATA/EyePACS not available')
    ours = write_eyepacs_like(tmp_path / 'EyePACS', n_patients=2, size=64)
    r, o = ((p / 'trainLabels.csv').read_bytes().split(b'\n')[:3] for p in (real, ours))
    assert r[0] == o[0] and [x.split(b',')[0].split(b'_')[1] for x in r[1:]] == [x.split(b',')[0].split(b'_')[1] for x in o[1:]]
    assert sorted(p.suffix for p in (real / 'sample').iterdir())[0] == sorted(p.suffix for p in (ours / 'train').iterdir())[0]

def test_odir_like_p_normal_sets_the_class_balance(tmp_path):
    "Drawn ODIR-like eyes are ~1 in 10 normal; p_normal makes that share of patients healthy (both eyes written, labelled N)."
    import fundus_ssl.datasets as D
    df = D.read_odir(write_odir_like(tmp_path / 'ODIR', 30, size=64, p_normal=0.5))
    assert 0.3 < (df['label'] == 'normal').mean() < 0.75
    drawn = D.read_odir(write_odir_like(tmp_path / 'ODIR0', 30, size=64))
    assert (drawn['label'] == 'normal').mean() < 0.25
    with pytest.raises(ValueError, match='p_normal must be a share'): write_odir_like(tmp_path / 'x', 2, p_normal=1.5)
