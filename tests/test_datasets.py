"""Tests of `fundus_ssl.datasets`: every reader on a miniature copy of its distributed layout (tests/layouts.py),
its bad-input errors, and, when FUNDUS_DATA points to them, the real copies in ../shared/data."""
import functools, re, shutil, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest

sys.path.insert(0, str(Path(__file__).parent))
import layouts
from fundus_ssl.core import fundus_data_root
from fundus_ssl.datasets import *

def names(paths): return [p and Path(p).name for p in paths]

def quiet(f, *args, **kwargs):
    "`f(*args, **kwargs)` with `MissingFilesWarning`s silenced."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingFilesWarning)
        return f(*args, **kwargs)

def check_conventions(df):
    "The columns and attrs every reader promises."
    for c in ('image', 'split', 'patient', 'eye', 'dataset'): assert c in df, c
    assert set(df.split.dropna()) <= {'train', 'valid', 'test'}
    assert set(df.eye.dropna()) <= {'left', 'right'}
    for k in ('task', 'label_cols', 'mask_cols', 'mask_encoding', 'n_missing'): assert k in df.attrs, k
    for c in df.attrs['mask_cols'] + ['image'] * isinstance(df.image.iloc[0], str):
        assert all(p is None or Path(p).exists() for p in df[c]), c
    assert df.index.equals(pd.RangeIndex(len(df)))

# ------------------------------------------------------------------ generic readers
def test_read_paired_folders(tmp_path):
    d = layouts.write_drive(tmp_path)/'test'
    df = read_paired_folders(d/'images', d/'2nd_manual', '{id}_manual2', id_re=r'(\d+)_', split='test', dataset='DRIVE')
    check_conventions(df)
    assert names(df['mask']) == ['01_manual2.gif', '02_manual2.gif'] and df.id.tolist() == ['01', '02']
    assert df.attrs['mask_encoding'] == 'binary' and df.dataset.iloc[0] == 'DRIVE'
    (d/'2nd_manual'/'02_manual2.gif').unlink()
    with pytest.warns(MissingFilesWarning, match='1 of 2 images have no mask'):
        df = read_paired_folders(d/'images', d/'2nd_manual', '{id}_manual2', id_re=r'(\d+)_')
    assert df['mask'].tolist()[1] is None
    with pytest.raises(DatasetLayoutError, match='does not match'):
        read_paired_folders(d/'images', d/'mask', id_re=r'(\d+)x')

def test_read_folder_per_class(tmp_path):
    df = read_folder_per_class(layouts.write_eyediseases4class(tmp_path, n=2), split='train')
    check_conventions(df)
    assert df.label.tolist() == ['cataract']*2 + ['diabetic_retinopathy']*2 + ['glaucoma']*2 + ['normal']*2
    assert set(df.split) == {'train'}
    with pytest.raises(DatasetLayoutError, match='holds no class folders'):
        read_folder_per_class(tmp_path/'normal')

def test_read_csv_with_paths(tmp_path):
    layouts.tiny_images(tmp_path/'imgs', ['a.png', 'B.PNG'])
    xlsx = layouts.write_table(tmp_path/'labels.xlsx', pd.DataFrame({'file': ['a.png', 'b.png', 'c.png'], 'y': [1, 0, 1]}))
    with pytest.warns(MissingFilesWarning, match='1 of 3 rows of labels.xlsx have no image'):
        df = read_csv_with_paths(xlsx, tmp_path/'imgs', 'file', {'y': ('glaucoma', (0, 1))})
    check_conventions(df)
    assert names(df.image) == ['a.png', 'B.PNG'] and df.glaucoma.tolist() == [1, 0] and df.attrs['n_missing'] == 1
    assert df.attrs['label_cols'] == ['glaucoma']
    with pytest.raises(DatasetLayoutError, match='1 of 3 rows'):
        read_csv_with_paths(xlsx, tmp_path/'imgs', 'file', strict=True)
    with pytest.raises(DatasetLabelError, match=r"labels.xlsx: no column 'label'"):
        read_csv_with_paths(xlsx, tmp_path/'imgs', 'file', {'label': ('label', None)})
    with pytest.raises(DatasetLabelError, match=r"column 'y' holds \['1'\]"):
        read_csv_with_paths(xlsx, tmp_path/'imgs', 'file', {'y': ('y', (0,))})

def test_fold_split():
    y = np.repeat([0, 1, 2], 10)
    folds = [fold_split(y, 5, f, seed=3) for f in range(5)]
    assert (np.sum([f == 'test' for f in folds], axis=0) == 1).all()
    assert all(np.bincount(y[f == 'test']).tolist() == [2, 2, 2] for f in folds)
    assert (fold_split(y, 5, 2, seed=3) == folds[2]).all()
    assert not (fold_split(y, 5, 2, seed=4) == folds[2]).all()
    with pytest.raises(ValueError, match='fold=-1'): fold_split(y, 5, -1)

# ------------------------------------------------------------------ vessels
def test_read_drive(tmp_path):
    df = read_drive(layouts.write_drive(tmp_path))
    check_conventions(df)
    assert df.split.tolist() == ['train']*3 + ['test']*2 and df.id.tolist() == ['21', '22', '23', '01', '02']
    assert names(df['mask']) == ['21_manual1.gif', '22_manual1.gif', '23_manual1.gif', '01_manual1.gif', '02_manual1.gif']
    assert names(df.mask2) == [None]*3 + ['01_manual2.gif', '02_manual2.gif']
    assert names(df.fov)[3] == '01_test_mask.gif'
    assert df.attrs['mask_cols'] == ['mask', 'mask2'] and df.attrs['task'] == 'segmentation'

def test_read_drive_challenge_download(tmp_path):
    with pytest.warns(MissingFilesWarning, match='challenge download'):
        df = read_drive(layouts.write_drive(tmp_path, test_manuals=False))
    assert df['mask'][df.split == 'test'].isna().all() and df['mask'][df.split == 'train'].notna().all()

def test_read_drive_bad(tmp_path):
    root = layouts.write_drive(tmp_path)
    shutil.rmtree(root/'training'/'1st_manual')
    with pytest.raises(DatasetLayoutError, match='1st_manual: folder not found') as e: read_drive(root)
    assert 'Expected layout:\nDRIVE/' in str(e.value) and e.value.dataset == 'DRIVE'
    root = layouts.write_drive(tmp_path/'again')
    for f in (root/'test'/'images').iterdir(): f.unlink()
    with pytest.raises(DatasetLayoutError, match='test/images: holds no images'): read_drive(root)

@pytest.mark.parametrize('gz', [True, False])
def test_read_stare(tmp_path, gz):
    df = read_stare(layouts.write_stare(tmp_path, gz=gz))
    check_conventions(df)
    assert len(df) == 12 and df.split.tolist() == ['train']*10 + ['test']*2
    ext = '.ppm.gz' if gz else '.ppm'
    assert names(df['mask'])[0] == f'im0001.ah{ext}' and names(df.mask2)[0] == f'im0001.vk{ext}'
    assert df.fov.isna().all()
    df = read_stare(tmp_path, train_ids=['im0162', 'im0163'])
    assert df.id[df.split == 'train'].tolist() == ['im0162', 'im0163']
    with pytest.raises(ValueError, match=r"train_ids \['im9999'\]"): read_stare(tmp_path, train_ids=['im9999'])
    shutil.rmtree(tmp_path/'labels-vk')
    with pytest.raises(DatasetLayoutError, match='labels-vk: folder not found'): read_stare(tmp_path)

def test_read_chase_db1(tmp_path):
    df = read_chase_db1(layouts.write_chase_db1(tmp_path))
    check_conventions(df)
    assert len(df) == 28 and (df.split == 'train').sum() == 20
    assert df.id[df.split == 'test'].tolist() == [f'Image_{c}{e}' for c in range(11, 15) for e in 'LR']
    assert df.patient.tolist()[:4] == ['01', '01', '02', '02'] and df.eye.tolist()[:2] == ['left', 'right']
    assert names(df['mask'])[0] == 'Image_01L_1stHO.png' and names(df.mask2)[0] == 'Image_01L_2ndHO.png'

def test_read_hrf(tmp_path):
    df = read_hrf(layouts.write_hrf(tmp_path, n=6)).set_index('id')
    assert len(df) == 18 and (df.split == 'train').sum() == 15
    assert names([df.image['03_dr']]) == ['03_dr.JPG'] and names([df.fov['03_dr']]) == ['03_dr_mask.tif']
    assert df.label['06_g'] == 'glaucoma' and df.split['06_g'] == 'test' and df.label['02_h'] == 'healthy'

# ------------------------------------------------------------------ IDRiD
def test_read_idrid_segmentation(tmp_path):
    df = read_idrid_segmentation(layouts.write_idrid_segmentation(tmp_path))
    check_conventions(df)
    assert df.split.tolist() == ['train', 'train', 'test'] and df.attrs['mask_encoding'] == 'lesions'
    assert df.mask_SE[1] is None and df.mask_SE[0] is not None
    assert names(df.mask_OD) == ['IDRiD_01_OD.tif', 'IDRiD_02_OD.tif', 'IDRiD_55_OD.tif']
    shutil.rmtree(tmp_path/'A. Segmentation/2. All Segmentation Groundtruths/b. Testing Set/3. Hard Exudates')
    with pytest.raises(DatasetLayoutError, match='3. Hard Exudates: folder not found'): read_idrid_segmentation(tmp_path)
    assert len(read_idrid_segmentation(tmp_path/'A. Segmentation', splits=['train'])) == 2

def test_read_idrid_grading(tmp_path):
    df = read_idrid_grading(layouts.write_idrid_grading(tmp_path))
    check_conventions(df)
    assert df.id.tolist() == ['IDRiD_001', 'IDRiD_002', 'IDRiD_003', 'IDRiD_004', 'IDRiD_001', 'IDRiD_002']
    assert df.image.nunique() == 6 and 'b. Testing Set' in df.image[4]
    assert df.dr_grade.tolist() == [0, 1, 2, 3, 0, 1] and df.dme_risk.tolist() == [0, 1, 2, 0, 0, 1]
    assert df.attrs['label_cols'] == ['dr_grade', 'dme_risk']
    assert len(read_idrid_grading(tmp_path/'B. Disease Grading', splits=['test'])) == 2

def test_read_idrid_grading_bad_labels(tmp_path):
    root = layouts.write_idrid_grading(tmp_path)
    csv = root/'B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv'
    layouts.write_table(csv, layouts.idrid_grading_labels(['IDRiD_001']).rename(columns={'Risk of macular edema ': 'DME'}))
    with pytest.raises(DatasetLabelError, match=r"Testing Labels.csv: no column 'Risk of macular edema '"): read_idrid_grading(root)
    layouts.write_table(csv, layouts.idrid_grading_labels(['IDRiD_001']).assign(**{'Risk of macular edema ': 3}))
    with pytest.raises(DatasetLabelError, match=r"Testing Labels.csv: column 'Risk of macular edema ' holds \['3'\]"): read_idrid_grading(root)

# ------------------------------------------------------------------ disc / cup
def test_read_refuge(tmp_path):
    root = layouts.write_refuge(tmp_path)
    seg = read_refuge_segmentation(root)
    check_conventions(seg)
    assert seg.split.value_counts().to_dict() == {'train': 5, 'valid': 4, 'test': 2}
    assert seg.attrs['mask_encoding'] == 'refuge' and names(seg['mask'])[-2:] == ['T0001.bmp', 'T0002.bmp']
    cls = read_refuge_classification(root)
    check_conventions(cls)
    assert 'mask' not in cls and cls.glaucoma.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert read_refuge_classification(root, splits=['valid']).id.tolist() == ['V0001', 'V0002', 'V0003', 'V0004']
    with pytest.raises(ValueError, match='unknown splits'): read_refuge_classification(root, splits=['val'])

def test_read_refuge_bad(tmp_path):
    root = layouts.write_refuge(tmp_path)
    (root/'REFUGE-Validation400-GT/Fovea_locations.xlsx').unlink()
    with pytest.raises(DatasetLayoutError, match='Fovea_locations.xlsx: label file not found'): read_refuge_classification(root)
    assert len(read_refuge_classification(root, splits=['train', 'test'])) == 7
    (root/'REFUGE-Test-GT/Disc_Cup_Masks/N/T0002.bmp').unlink()
    with pytest.raises(DatasetLabelError, match='no glaucoma label for 1 images'): read_refuge_classification(root, splits=['test'])
    shutil.rmtree(root/'REFUGE-Test-GT/Disc_Cup_Masks/N')
    with pytest.raises(DatasetLayoutError, match=r"Disc_Cup_Masks: class folders \['N'\] not found"): read_refuge_classification(root, splits=['test'])

def test_read_drishti_gs1(tmp_path):
    df = read_drishti_gs1(layouts.write_drishti_gs1(tmp_path))
    check_conventions(df)
    assert df.split.tolist() == ['train', 'train', 'test'] and df.attrs['mask_encoding'] == 'drishti'
    assert names(df['mask'])[0] == 'drishtiGS_002_ODsegSoftmap.png' and names(df.mask_cup)[0] == 'drishtiGS_002_cupsegSoftmap.png'
    assert len(read_drishti_gs1(tmp_path/'Drishti-GS1_files', splits=['test'])) == 1

def test_read_odoc_multidomain(tmp_path):
    df = read_odoc_multidomain(layouts.write_odoc_multidomain(tmp_path))
    check_conventions(df)
    assert len(df) == 8 and df.split.tolist() == ['train', 'test']*4 and df.domain.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert names(df['mask']) == names(df.image) and df.attrs['mask_encoding'] == 'refuge'
    assert read_odoc_multidomain(tmp_path, domains=[3]).id.tolist() == ['g0003', 'g0001']

def test_read_drions_db(tmp_path):
    df = read_drions_db(layouts.write_drions_db(tmp_path))
    check_conventions(df)
    assert df.id.tolist() == ['image_001', 'image_002', 'image_003', 'image_091', 'image_092']
    assert [Path(m).parts[-3:-1] for m in df['mask']][3] == ('test', 'groundtruth')

# ------------------------------------------------------------------ grading
def test_read_eyepacs(tmp_path):
    root = layouts.write_eyepacs(tmp_path)
    with pytest.warns(MissingFilesWarning, match=r'4 of 10 rows of trainLabels.csv have no image here.*kept the 6'):
        df = read_eyepacs(root)
    check_conventions(df)
    assert df.split.tolist() == ['train']*6 + ['test']*2 and df.attrs['n_missing'] == 4
    assert df.patient.tolist()[:3] == ['10', '10', '11'] and df.eye.tolist()[:2] == ['left', 'right']
    assert df.dr_grade.tolist() == [0, 1, 2, 3, 4, 0, 0, 2] and df.usage.tolist()[-2:] == ['Public', 'Private']
    with pytest.raises(DatasetLayoutError, match='4 of 10 rows') as e: read_eyepacs(root, strict=True)
    assert 'Expected layout:\nEyePACS/' in str(e.value)
    assert len(read_eyepacs(root, splits=['test'])) == 2

def test_read_eyepacs_sample_folder(tmp_path):
    root = layouts.write_eyepacs(tmp_path, n_patients=5, n_without_image=0, folder='sample', test=False)
    df = read_eyepacs(root)
    assert len(df) == 10 and set(df.split) == {'train'} and 'sample' in df.image[0] and df.attrs['n_missing'] == 0

def test_read_eyepacs_bad(tmp_path):
    root = layouts.write_eyepacs(tmp_path, test=False)
    layouts.write_table(root/'trainLabels.csv', pd.DataFrame({'image': ['10_left', '10_right'], 'level': [0, 7]}))
    with pytest.raises(DatasetLabelError, match=r"trainLabels.csv: column 'level' holds \['7'\]"): read_eyepacs(root)
    layouts.write_table(root/'trainLabels.csv', pd.DataFrame({'image': ['10_left'], 'grade': [0]}))
    with pytest.raises(DatasetLabelError, match=r"trainLabels.csv: no column 'level'"): read_eyepacs(root)
    layouts.write_table(root/'trainLabels.csv', pd.DataFrame({'image': ['99_left'], 'level': [0]}))
    with pytest.raises(DatasetLayoutError, match='1 of 1 rows'): read_eyepacs(root)  # nothing found: error even when not strict
    layouts.write_table(root/'trainLabels.csv', pd.DataFrame({'image': [], 'level': []}))
    with pytest.raises(DatasetLayoutError, match='holds no images'): read_eyepacs(root)

def test_read_aptos2019(tmp_path):
    df = read_aptos2019(layouts.write_aptos2019(tmp_path))
    check_conventions(df)
    assert df.id.tolist()[0] == '000000000000'  # all-digit ids keep their zeros
    assert df.dr_grade.tolist()[:5] == [0, 1, 2, 3, 4] and df.dr_grade[5:].isna().all() and df.dr_grade.dtype == 'Int64'
    assert read_aptos2019(tmp_path, splits=['test']).dr_grade.isna().all()

def test_read_messidor(tmp_path):
    df = read_messidor(layouts.write_messidor(tmp_path))
    check_conventions(df)
    assert len(df) == 20 and df.base.tolist() == ['Base11']*10 + ['Base12']*10
    assert df.dr_grade.tolist()[:10] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and df.dme_risk.tolist()[:4] == [0, 1, 2, 0]
    folds = [read_messidor(tmp_path, fold=f).split for f in range(5)]
    assert (sum(f == 'test' for f in folds) == 1).all()
    for f in folds:  # stratified: each grade's count in a test fold is its total / 5, rounded down or up
        counts = df.dr_grade[f == 'test'].value_counts().reindex(range(4), fill_value=0)
        assert ((counts >= df.dr_grade.value_counts().sort_index() // 5) & (counts <= -(-df.dr_grade.value_counts().sort_index() // 5))).all()
    assert set(read_messidor(tmp_path, n_folds=None).split) == {'test'}

def test_read_messidor_bad(tmp_path):
    root = layouts.write_messidor(tmp_path)
    xls = root/'Base12'/'Annotation Base12.xls'
    table = pd.read_excel(xls)
    layouts.write_table(xls, table.drop(columns='Risk of macular edema '))
    with pytest.raises(DatasetLabelError, match=r"Annotation Base12.xls: no column 'Risk of macular edema '"): read_messidor(root)
    layouts.write_table(xls, table.assign(**{'Retinopathy grade': 4}))
    with pytest.raises(DatasetLabelError, match=r"Annotation Base12.xls: column 'Retinopathy grade' holds \['4'\]"): read_messidor(root)
    xls.unlink()
    with pytest.raises(DatasetLayoutError, match='Annotation_Base12.xls: not found') as e: read_messidor(root)
    assert 'Expected layout:\nMessidor/' in str(e.value)

def test_read_messidor2(tmp_path):
    df = read_messidor2(layouts.write_messidor2(tmp_path), n_folds=2, seed=1)
    check_conventions(df)
    assert names(df.image)[:2] == ['IM000001.jpg', 'IM000002.JPG']  # listed .jpg, stored .JPG
    assert df.dr_grade.tolist()[:9] == [0, 1, 2, 3, 4, 0, 1, 2, 3] and df.dr_grade.isna().tolist()[-1]
    assert df.gradable.tolist() == [True]*9 + [False] and df.dme.isna().sum() == 1
    assert df.patient.tolist()[::2] == [f'IM{i:06d}.jpg' for i in (1, 3, 5, 7, 9)]
    assert (df.groupby('patient').split.nunique() == 1).all()
    (tmp_path/'messidor-2.csv').unlink()
    assert read_messidor2(tmp_path, n_folds=None).patient.isna().all()
    layouts.write_table(tmp_path/'messidor_data.csv', pd.DataFrame({'image_id': ['IM000001.jpg'], 'adjudicated_dr_grade': [9],
                        'adjudicated_dme': [0], 'adjudicated_gradable': [1]}))
    with pytest.raises(DatasetLabelError, match=r"column 'adjudicated_dr_grade' holds \['9'\]"): read_messidor2(tmp_path)

def test_read_ddr(tmp_path):
    df = read_ddr(layouts.write_ddr(tmp_path))
    check_conventions(df)
    assert df.split.tolist() == ['train']*6 + ['valid']*2 + ['test']*2
    assert df.dr_grade.tolist()[:5] == [0, 1, 2, 3, 4] and df.dr_grade.isna().tolist() == [False]*5 + [True] + [False]*3 + [True]
    assert df.gradable.tolist() == [True]*5 + [False] + [True]*3 + [False]
    (tmp_path/'DR_grading'/'valid.txt').write_text('007-va00-000.jpg 6\n')
    with pytest.raises(DatasetLabelError, match=r"valid.txt: column 'dr_grade' holds \['6'\]"): read_ddr(tmp_path)

def test_read_retinamnist(tmp_path):
    root = layouts.write_retinamnist(tmp_path)
    df = read_retinamnist(root)
    check_conventions(df)
    assert df.split.tolist() == ['train']*6 + ['valid']*2 + ['test']*3
    assert all(im.shape == (28, 28, 3) and im.dtype == np.uint8 for im in df.image)
    assert [int(im[0, 0, 0]) for im in df.image[:6]] == list(range(6)) and df.dr_grade.tolist()[:6] == [0, 1, 2, 3, 4, 0]
    assert len(read_retinamnist(root/'retinamnist.npz')) == 11
    np.savez(root/'retinamnist.npz', train_images=np.zeros((1, 28, 28, 3), np.uint8), train_labels=np.array([[5]]))
    with pytest.raises(DatasetLabelError, match=r"column 'train_labels' holds \['5'\]"): read_retinamnist(root)
    np.savez(root/'retinamnist.npz', train_images=np.zeros((1, 28, 28, 3), np.uint8), train_labels=np.array([[1]]))
    with pytest.raises(DatasetLayoutError, match=r"lacks the arrays \['val_images', 'val_labels'\]"): read_retinamnist(root)

# ------------------------------------------------------------------ multi-disease
def test_odir_rule():
    assert odir_keywords('normal fundus，lens dust') == ['normal fundus', 'lens dust']
    assert odir_keywords(' Glaucoma , suspected glaucoma') == ['glaucoma', 'suspected glaucoma']
    normal = ['normal fundus', 'lens dust', 'normal fundus，lens dust', 'lens dust,normal fundus']
    abnormal = ['cataract', 'cataract，lens dust', 'normal fundus，glaucoma', '', 'nan-free text']
    assert all(odir_is_normal(odir_keywords(k)) for k in normal)
    assert not any(odir_is_normal(odir_keywords(k)) for k in abnormal)

def test_read_odir_oia(tmp_path):
    with pytest.warns(MissingFilesWarning, match=r"dropped 1 of 12 eyes tagged \['anterior segment image'\]"):
        df = read_odir(layouts.write_odir_oia(tmp_path))
    check_conventions(df)
    assert df.attrs['n_dropped'] == 1 and len(df) == 11 and df.split.value_counts().to_dict() == {'train': 7, 'valid': 4}
    assert names(df.image)[:7] == ['0_left.jpg', '0_right.jpg', '1_left.jpg', '1_right.jpg', '2_left.jpg', '2_right.jpg', '3_left.jpg']
    assert df.label.tolist()[:7] == ['normal', 'normal', 'abnormal', 'normal', 'normal', 'abnormal', 'abnormal']
    assert df.patient.tolist()[:3] == ['0', '0', '1'] and df.eye.tolist()[:2] == ['left', 'right']
    assert df.C.tolist()[2:4] == [1, 1]  # N..O are patient-level
    assert df.attrs['label_cols'] == ['label', *'NDGCAHMO']
    assert len(quiet(read_odir, tmp_path, splits=['valid'])) == 4
    with pytest.raises(DatasetLayoutError, match='On-site Test Set: folder not found'): quiet(read_odir, tmp_path, splits=['test'])

def test_read_odir_kaggle(tmp_path):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        df = read_odir(layouts.write_odir_kaggle(tmp_path))
    messages = [str(m.message) for m in w]
    assert any('1 of 8 rows of full_df.csv have no image' in m for m in messages)
    assert any('dropped 1 of 7 eyes' in m for m in messages)
    assert df.attrs['n_missing'] == 1 and df.attrs['n_dropped'] == 1 and len(df) == 6
    assert names(df.image) == ['0_left.jpg', '0_right.jpg', '1_left.jpg', '1_right.jpg', '2_left.jpg', '2_right.jpg']
    assert df.label.tolist() == ['normal', 'normal', 'abnormal', 'normal', 'normal', 'abnormal']
    assert df.keywords[3] == 'normal fundus，lens dust' and set(df.split) == {'train'}

def test_read_odir_bad(tmp_path):
    layouts.write_odir_oia(tmp_path)
    xlsx = tmp_path/'Training Set/Annotation/training annotation (English).xlsx'
    layouts.write_table(xlsx, layouts.odir_annotation().assign(G=2))
    with pytest.raises(DatasetLabelError, match=r"training annotation \(English\).xlsx: column 'G' holds \['2'\]"): read_odir(tmp_path)
    layouts.write_table(xlsx, layouts.odir_annotation().drop(columns='Left-Diagnostic Keywords'))
    with pytest.raises(DatasetLabelError, match="no column 'Left-Diagnostic Keywords'"): read_odir(tmp_path)
    with pytest.raises(DatasetLayoutError, match='holds none of') as e: read_odir(tmp_path/'Training Set')
    assert 'full_df.csv' in str(e.value)

def test_read_rfmid(tmp_path):
    df = read_rfmid(layouts.write_rfmid(tmp_path))
    check_conventions(df)
    assert df.attrs['label_cols'] == layouts.RFMID_COLS and df.split.tolist() == ['train']*3 + ['valid']*2 + ['test']
    assert df.Disease_Risk.tolist() == [0, 1, 0, 0, 1, 0] and df.DR.tolist()[:3] == [0, 0, 1]
    csv = tmp_path/'2. Groundtruths'/'c. RFMiD_Testing_Labels.csv'
    layouts.write_table(csv, pd.DataFrame({'ID': [1], 'Disease_Risk': [2]}))
    with pytest.raises(DatasetLabelError, match=r"RFMiD_Testing_Labels.csv: column 'Disease_Risk' holds \['2'\]"): read_rfmid(tmp_path)

def test_read_eyediseases4class(tmp_path):
    df = read_eyediseases4class(layouts.write_eyediseases4class(tmp_path, n=3))
    check_conventions(df)
    assert df.label.value_counts().to_dict() == dict.fromkeys(['cataract', 'diabetic_retinopathy', 'glaucoma', 'normal'], 3)
    dr = df.label == 'diabetic_retinopathy'
    assert df.dr_grade[dr].tolist() == [0, 1, 2] and df.dr_grade[~dr].isna().all()
    assert df.eye[dr].tolist() == ['right']*3 and df.eye[df.label == 'glaucoma'].isna().all()
    assert df.attrs['label_cols'] == ['label', 'dr_grade']
    csv = tmp_path/'eyepacs_levels.csv'
    table = pd.read_csv(csv)
    layouts.write_table(csv, table.assign(level=[0, 1, 9]))
    with pytest.raises(DatasetLabelError, match=r"eyepacs_levels.csv: column 'level' holds \['9'\]"): read_eyediseases4class(tmp_path)
    layouts.write_table(csv, table.assign(relpath='diabetic_retinopathy/none.jpeg'))
    with pytest.raises(DatasetLayoutError, match='listed in eyepacs_levels.csv but not found'): read_eyediseases4class(tmp_path)
    csv.unlink()
    assert read_eyediseases4class(tmp_path).dr_grade.isna().all()

# ------------------------------------------------------------------ ambiguous data (issue 12, items 10-13)
def _table(path):
    return pd.read_excel(path, dtype=str) if path.suffix in ('.xls', '.xlsx') else pd.read_csv(path, dtype=str)

# dataset -> (layout writer, reader, label file, a 0/1-valued label column of its first row)
LABEL_FILES = {
    'EyePACS': (layouts.write_eyepacs, read_eyepacs, 'trainLabels.csv', 'level'),
    'APTOS2019': (layouts.write_aptos2019, read_aptos2019, 'train.csv', 'diagnosis'),
    'Messidor': (layouts.write_messidor, read_messidor, 'Base11/Annotation_Base11.xls', 'Retinopathy grade'),
    'Messidor-2': (layouts.write_messidor2, functools.partial(read_messidor2, n_folds=None), 'messidor_data.csv', 'adjudicated_dme'),
    'IDRiD grading': (layouts.write_idrid_grading, read_idrid_grading,
                      'B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv', 'Retinopathy grade'),
    'RFMiD': (layouts.write_rfmid, read_rfmid, '2. Groundtruths/a. RFMiD_Training_Labels.csv', 'DR'),
    'ODIR OIA': (layouts.write_odir_oia, read_odir, 'Training Set/Annotation/training annotation (English).xlsx', 'D'),
    'ODIR Kaggle': (layouts.write_odir_kaggle, read_odir, 'full_df.csv', 'D'),
    'REFUGE': (layouts.write_refuge, read_refuge_classification, 'REFUGE-Validation400-GT/Fovea_locations.xlsx', 'Glaucoma Label'),
    'EyeDiseases4class': (layouts.write_eyediseases4class, read_eyediseases4class, 'eyepacs_levels.csv', 'level'),
}

@pytest.mark.parametrize('name', LABEL_FILES)
def test_duplicated_label_rows(tmp_path, name):
    "Two rows for one image: identical ones are kept once with a warning; different labels are an error naming the file."
    write, read, rel, col = LABEL_FILES[name]
    root = write(tmp_path)
    n = len(quiet(read, root))
    path, table = root/rel, _table(root/rel)
    layouts.write_table(path, pd.concat([table, table.iloc[:1]], ignore_index=True))  # e.g. ODIR: 1603 rows, 1602 images
    with pytest.warns(DuplicateRowsWarning, match='repeat an earlier row whole'):
        assert len(quiet(read, root)) == n
    changed = table.iloc[:1].assign(**{col: '1' if table[col].iloc[0] == '0' else '0'})
    layouts.write_table(path, pd.concat([table, changed], ignore_index=True))  # EyePACS: 10_left graded 0 and 4
    with pytest.raises(DatasetLabelError, match=f'{re.escape(path.name)}: .* several rows with different labels'): quiet(read, root)

def test_duplicated_label_rows_message(tmp_path):
    root = layouts.write_eyepacs(tmp_path)
    csv = root/'trainLabels.csv'
    table = pd.read_csv(csv)
    layouts.write_table(csv, pd.concat([table, pd.DataFrame({'image': ['10_left'], 'level': [4]})]))
    with pytest.raises(DatasetLabelError) as e: quiet(read_eyepacs, root)
    assert str(e.value) == (f"{csv}: 1 images have several rows with different labels: ['10_left'] "
                            "(e.g. '10_left': {'dr_grade': [0, 4]}); keep one row per image")

def test_duplicated_ddr_lines(tmp_path):
    txt = layouts.write_ddr(tmp_path)/'DR_grading'/'train.txt'
    first = txt.read_text().splitlines()[0]
    txt.write_text(txt.read_text() + first + '\n')
    with pytest.warns(DuplicateRowsWarning): assert len(read_ddr(tmp_path, splits=['train'])) == 6
    txt.write_text(txt.read_text() + first.split()[0] + ' 3\n')
    with pytest.raises(DatasetLabelError, match=r"train.txt: 1 images have several rows .*'007-tr00-000'"): read_ddr(tmp_path)

# dataset -> (layout writer, reader, an existing file, the same id with another extension)
TWO_FILES = {
    'DRIVE image': (layouts.write_drive, read_drive, 'training/images/21_training.tif', '21_training.png'),
    'DRIVE manual': (layouts.write_drive, read_drive, 'training/1st_manual/21_manual1.gif', '21_manual1.png'),
    'DRIVE FOV': (layouts.write_drive, read_drive, 'test/mask/01_test_mask.gif', '01_test_mask.tif'),
    'STARE image': (layouts.write_stare, read_stare, 'stare-images/im0001.ppm.gz', 'im0001.ppm'),
    'STARE label': (layouts.write_stare, read_stare, 'labels-ah/im0001.ah.ppm.gz', 'im0001.ah.ppm'),
    'CHASE_DB1': (layouts.write_chase_db1, read_chase_db1, 'Image_01L_1stHO.png', 'Image_01L_1stHO.gif'),
    'HRF': (layouts.write_hrf, read_hrf, 'images/01_dr.JPG', '01_dr.png'),
    'IDRiD segmentation': (layouts.write_idrid_segmentation, read_idrid_segmentation,
                           'A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif', 'IDRiD_01_MA.png'),
    'REFUGE': (layouts.write_refuge, read_refuge_segmentation, 'Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp', 'g0001.png'),
    'ODOC': (layouts.write_odoc_multidomain, read_odoc_multidomain, 'Domain2/train/ROIs/mask/G-1-L.png', 'G-1-L.bmp'),
    'DRIONS-DB': (layouts.write_drions_db, read_drions_db, 'train/image/image_001.jpg', 'image_001.png'),
    'EyePACS': (layouts.write_eyepacs, read_eyepacs, 'train/10_left.jpeg', '10_left.JPG'),
    'ODIR': (layouts.write_odir_kaggle, read_odir, 'preprocessed_images/0_left.jpg', '0_left.png'),
    'EyeDiseases4class': (layouts.write_eyediseases4class, read_eyediseases4class, 'normal/0_left.jpg', '0_left.png'),
}

@pytest.mark.parametrize('name', TWO_FILES)
def test_one_id_two_files(tmp_path, name):
    "The same id with two extensions is an error naming both files, never two rows sharing one mask."
    write, read, rel, other = TWO_FILES[name]
    root = write(tmp_path)
    quiet(read, root)
    shutil.copy(root/rel, (root/rel).with_name(other))
    with pytest.raises(DatasetLayoutError, match='one id, two files') as e: quiet(read, root)
    assert Path(rel).name in str(e.value) and other in str(e.value)

def test_class_folders_checked(tmp_path):
    "A reader of a class-folder layout checks its class names: another dataset's root, a stray folder or loose image is an error."
    odir = layouts.write_odir_kaggle(tmp_path/'ODIR-5K')
    with pytest.raises(DatasetLayoutError, match=r"class folders \['cataract', 'diabetic_retinopathy', 'glaucoma', 'normal'\] "
                                                 r"not found \(it holds \['preprocessed_images'\]\)"):
        read_eyediseases4class(odir)
    with pytest.raises(DatasetLayoutError, match="holds a single sub-folder, 'preprocessed_images'"): read_folder_per_class(odir)
    assert len(read_folder_per_class(odir, classes=['preprocessed_images'])) == 7  # asked for explicitly
    root = layouts.write_eyediseases4class(tmp_path/'E4', n=2)
    layouts.tiny_images(root/'__MACOSX'/'normal', ['._0_left.jpg'])  # what macOS zips add: never a class
    assert len(read_eyediseases4class(root)) == 8
    layouts.tiny_images(root/'unsorted', ['x.jpg'])
    with pytest.raises(DatasetLayoutError, match=r"holds \['unsorted'\], not among the classes"): read_eyediseases4class(root)
    shutil.rmtree(root/'unsorted')
    layouts.tiny_images(root, ['loose.jpg'])
    with pytest.raises(DatasetLayoutError, match='holds 1 images outside the class folders, e.g. loose.jpg'): read_eyediseases4class(root)
    (root/'loose.jpg').unlink()
    shutil.rmtree(root/'glaucoma')
    with pytest.raises(DatasetLayoutError, match=r"class folders \['glaucoma'\] not found"): read_eyediseases4class(root)

def test_refuge_class_folders_checked(tmp_path):
    root = layouts.write_refuge(tmp_path)
    layouts.tiny_images(root/'REFUGE-Training400/Training400/unsorted', ['g0400.jpg'])  # was labelled non-glaucoma
    with pytest.raises(DatasetLayoutError, match=r"Training400: holds \['unsorted'\], not among the classes \['Glaucoma', 'Non-Glaucoma'\]"):
        read_refuge_classification(root)
    shutil.rmtree(root/'REFUGE-Training400/Training400/unsorted')
    layouts.tiny_masks(root/'REFUGE-Test-GT/Disc_Cup_Masks/suspect', ['T0003.bmp'])
    with pytest.raises(DatasetLayoutError, match=r"Disc_Cup_Masks: holds \['suspect'\]"): read_refuge_segmentation(root)

def test_odir_empty_keywords(tmp_path):
    "An empty keyword cell is no keyword, not the text 'nan': the label columns decide (N=1: normal), else the eye has no label."
    root = layouts.write_odir_oia(tmp_path)
    xlsx = root/'Training Set/Annotation/training annotation (English).xlsx'
    ann = layouts.odir_annotation()
    ann.loc[0, 'Left-Diagnostic Keywords'] = None   # patient 0: N=1
    ann.loc[1, 'Left-Diagnostic Keywords'] = None   # patient 1: C=1, left eye unknown
    layouts.write_table(xlsx, ann)
    with pytest.warns(MissingFilesWarning, match=r"1 eyes have no diagnostic keyword and a patient not labelled N=1.*\['1_left.jpg'\]"):
        df = read_odir(root, splits=['train'])
    assert names(df.image)[:3] == ['0_left.jpg', '0_right.jpg', '1_right.jpg']
    assert df.label.tolist()[:3] == ['normal', 'normal', 'normal'] and df.keywords[0] == ''
    assert df.attrs['n_unlabeled'] == 1 and df.attrs['n_dropped'] == 1
    ann.loc[0, 'Right-Diagnostic Keywords'] = 'cataract'  # disagrees with N=1: the label columns win, with a warning
    layouts.write_table(xlsx, ann)
    with pytest.warns(UserWarning, match=r"1 eyes of patients labelled N=1 have keywords that are not normal"):
        df = quiet(read_odir, root, splits=['train'])
    assert df.label[1] == 'normal'

def test_odir_kaggle_empty_keywords(tmp_path):
    root = layouts.write_odir_kaggle(tmp_path)
    table = pd.read_csv(root/'full_df.csv', dtype=str)
    table.loc[table.filename == '0_left.jpg', 'Left-Diagnostic Keywords'] = None
    layouts.write_table(root/'full_df.csv', table)
    df = quiet(read_odir, root)
    assert df.label[0] == 'normal' and df.keywords[0] == '' and df.attrs['n_unlabeled'] == 0

# ------------------------------------------------------------------ every reader: missing root
READERS = [read_drive, read_stare, read_chase_db1, read_hrf, read_idrid_grading, read_idrid_segmentation,
           read_refuge_classification, read_refuge_segmentation, read_drishti_gs1, read_messidor, read_messidor2,
           read_eyepacs, read_aptos2019, read_odir, read_rfmid, read_ddr, read_retinamnist, read_odoc_multidomain,
           read_drions_db, read_eyediseases4class, read_folder_per_class]

@pytest.mark.parametrize('reader', READERS, ids=lambda f: f.__name__)
def test_missing_root(tmp_path, reader):
    with pytest.raises(DatasetLayoutError) as e: reader(tmp_path/'absent')
    msg = str(e.value)
    assert f"{tmp_path/'absent'}: " in msg and 'not found' in msg and 'Expected layout:' in msg
    assert e.value.dataset in LAYOUTS and e.value.layout == LAYOUTS[e.value.dataset]
    assert 'Expected layout:' in reader.__doc__

@pytest.mark.parametrize('reader', READERS, ids=lambda f: f.__name__)
def test_empty_root(tmp_path, reader):
    "An existing but empty folder is a layout error, never an empty frame."
    with pytest.raises(DatasetLayoutError, match='Expected layout'): reader(tmp_path)

# ------------------------------------------------------------------ real copies (FUNDUS_DATA)
def real(name):
    root = fundus_data_root(name)
    if root is None: pytest.skip(f'{name}: set FUNDUS_DATA to the folder of real datasets')
    return root

def test_real_drive():
    df = read_drive(real('DRIVE'))
    check_conventions(df)
    assert df.split.value_counts().to_dict() == {'train': 20, 'test': 20}
    assert sorted(df.id[df.split == 'train'].astype(int)) == list(range(21, 41))
    assert df['mask'].notna().all() and df.fov.notna().all() and df.mask2[df.split == 'test'].notna().all()

def test_real_stare():
    df = read_stare(real('STARE'))
    check_conventions(df)
    assert len(df) == 20 and (df.split == 'train').sum() == 10 and df['mask'].notna().all() and df.mask2.notna().all()

def test_real_eyepacs():
    root = real('EyePACS')
    with pytest.warns(MissingFilesWarning, match='35116 of 35126 rows of trainLabels.csv'):
        df = read_eyepacs(root)
    check_conventions(df)
    assert len(df) == 10 and df.attrs['n_missing'] == 35116 and df.patient.nunique() == 5
    assert set(df.dr_grade) <= set(range(5))
    with pytest.raises(DatasetLayoutError, match='35116 of 35126'): read_eyepacs(root, strict=True)

def test_real_retinamnist():
    df = read_retinamnist(real('RetinaMNIST'))
    check_conventions(df)
    assert df.split.value_counts().to_dict() == {'train': 1080, 'test': 400, 'valid': 120}
    assert df.image[0].shape == (28, 28, 3) and set(df.dr_grade) == set(range(5))

def test_real_odir():
    root = real('ODIR-5K')
    df = read_odir(root)
    check_conventions(df)
    assert len(df) == 1602 and df.attrs['n_missing'] == 0 and df.attrs['n_dropped'] == 0 and df.attrs['n_unlabeled'] == 0
    assert df.eye.value_counts().to_dict() == {'left': 811, 'right': 791} and df.patient.nunique() == 957
    # SWCL's rule agrees with the mirror's own per-image label 'N' on every image
    mirror = pd.read_csv(root/'full_df.csv').set_index('filename')['labels']
    assert ((df.label == 'normal') == (mirror[names(df.image)].values == 'N')).all()
    assert (df.label == 'normal').sum() == 1000

def test_real_odoc():
    df = read_odoc_multidomain(real('ODOC_multidomain'))
    check_conventions(df)
    assert len(df) == 8 and df.domain.value_counts().to_dict() == dict.fromkeys([1, 2, 3, 4], 2) and df['mask'].notna().all()

def test_real_drions_db():
    df = read_drions_db(real('DRIONS-DB'))
    check_conventions(df)
    assert len(df) == 109 and df.split.value_counts().to_dict() == {'train': 90, 'test': 19} and df['mask'].notna().all()

def test_real_eyediseases4class():
    df = read_eyediseases4class(real('EyeDiseases4class_256'))
    check_conventions(df)
    assert len(df) == 4000 and set(df.label.value_counts()) == {1000}
    dr = df.dr_grade[df.label == 'diabetic_retinopathy']
    assert dr.notna().all() and (dr == 0).sum() == 736

def test_real_odir_root_is_not_four_classes():
    "The ODIR-5K root given to the four-class reader: an error, not 1,602 images of class 'preprocessed_images'."
    with pytest.raises(DatasetLayoutError, match=r"not found \(it holds \['preprocessed_images'\]\)"):
        read_eyediseases4class(real('ODIR-5K'))

def test_real_duplicated_eyepacs_row(tmp_path):
    "The real trainLabels.csv with 10_left repeated at grade 4 (it is 0): an error naming the file and the image."
    root = real('EyePACS')
    (tmp_path/'sample').symlink_to(root/'sample')
    table = pd.read_csv(root/'trainLabels.csv')
    assert table.level[table.image == '10_left'].tolist() == [0]
    layouts.write_table(tmp_path/'trainLabels.csv', pd.concat([table, pd.DataFrame({'image': ['10_left'], 'level': [4]})]))
    with pytest.raises(DatasetLabelError, match=r"trainLabels.csv: 1 images .* \['10_left'\]"): quiet(read_eyepacs, tmp_path)

# ------------------------------------------------------------------ your own data
def test_read_image_folder(tmp_path):
    layouts.tiny_images(tmp_path/'pool', ['b.jpg', 'A.PNG', 'x/c.tif', 'x/y/d.bmp', '__MACOSX/e.jpg', '.cache/f.jpg'])
    (tmp_path/'pool'/'x'/'readme.txt').write_text('no image')
    df = read_image_folder(tmp_path/'pool', split='train', dataset='my pool')
    check_conventions(df)
    assert df.id.tolist() == ['A', 'b', 'x/c', 'x/y/d'] and set(df.split) == {'train'} and set(df.dataset) == {'my pool'}
    assert df.attrs['label_cols'] == [] and df.attrs['task'] == 'unlabeled'
    assert read_image_folder(tmp_path/'pool', glob='x/*').id.tolist() == ['x/c']
    # same name in two folders: two images; two extensions of one name in one folder: an error
    layouts.tiny_images(tmp_path/'pool', ['x/b.jpg'])
    assert len(read_image_folder(tmp_path/'pool')) == 5
    layouts.tiny_images(tmp_path/'pool', ['x/c.png'])
    with pytest.raises(DatasetLayoutError, match='holds x/c.png and x/c.tif: one id, two files'): read_image_folder(tmp_path/'pool')
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{tmp_path/'pool'}: holds no images matching '*.jpeg'")):
        read_image_folder(tmp_path/'pool', glob='*.jpeg')
    with pytest.raises(DatasetLayoutError, match='is a file'): read_image_folder(tmp_path/'pool'/'b.jpg')

def test_read_class_folders(tmp_path):
    d = layouts.write_eyediseases4class(tmp_path/'c', n=2)
    layouts.tiny_images(d/'glaucoma'/'site2', ['g.png'])
    df = read_class_folders(d, split='test')
    check_conventions(df)
    assert df.label.value_counts().to_dict() == {c: 2 for c in ('cataract', 'diabetic_retinopathy', 'glaucoma', 'normal')}
    assert df.attrs['label_cols'] == ['label'] and df.attrs['task'] == 'classification'
    rec = read_class_folders(d, ['glaucoma'], recursive=True)
    assert rec.id.tolist() == ['glaucoma/Glaucoma_000', 'glaucoma/Glaucoma_001', 'glaucoma/site2/g']
    merged = read_class_folders(d, {'normal': 0, 'glaucoma': 1, 'cataract': 1}, label_col='abnormal')
    assert merged.abnormal.tolist() == [0, 0, 1, 1, 1, 1] and merged.attrs['label_cols'] == ['abnormal']
    layouts.tiny_images(d, ['loose.jpg'])
    with pytest.warns(MissingFilesWarning, match='1 images outside the class folders'): read_class_folders(d)
    layouts.tiny_images(d/'normal', ['0_left.png'])  # 0_left.jpg is there: one id, two files
    with pytest.raises(DatasetLayoutError, match='one id, two files'): read_class_folders(d, ['normal'])
    (d/'empty').mkdir()
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{d/'empty'}: holds no images")): read_class_folders(d, ['empty'])

def test_read_image_table(tmp_path):
    layouts.tiny_images(tmp_path/'data', ['a.png', 'b.png', 'sub/c.jpg'])
    t = pd.DataFrame({'path': ['a.png', 'b.png', str(tmp_path/'data'/'sub'/'c.jpg'), 'a.png'], 'grade': ['0', '2', '1', '0'],
                      'finding': ['none', 'dr', 'dr', 'none'], 'split': ['train', 'train', 'valid', 'train'],
                      'eye': [' left', 'right', None, ' left'], 'site': ['A', 'B', 'B', 'A']})
    xlsx = layouts.write_table(tmp_path/'tables'/'t.xlsx', t)
    with pytest.warns(DuplicateRowsWarning, match='1 rows repeat an earlier row whole'):
        df = read_image_table(xlsx, root=tmp_path/'data', image_col='path', label_cols=['grade', 'finding'])
    check_conventions(df)
    assert df.grade.tolist() == [0, 2, 1] and df.grade.dtype.kind == 'i' and df.finding.tolist() == ['none', 'dr', 'dr']
    assert df.split.tolist() == ['train', 'train', 'valid'] and df.eye.tolist() == ['left', 'right', None]
    assert df.site.tolist() == ['A', 'B', 'B'] and df.attrs['label_cols'] == ['grade', 'finding']
    # relative paths start from the table's folder by default: here they are not found, and the error names them
    with pytest.raises(DatasetLayoutError, match=r"3 of its 4 images do not exist \(relative paths start from .*tables\)"):
        read_image_table(xlsx, image_col='path')
    layouts.write_table(tmp_path/'data'/'blank.csv', pd.DataFrame({'image': ['a.png', None, 'b.png'], 'y': [0, 1, None]}))
    with pytest.raises(DatasetLabelError, match="column 'image' is empty in 1 rows"): read_image_table(tmp_path/'data'/'blank.csv')
    layouts.write_table(tmp_path/'data'/'txt.csv', pd.DataFrame({'image': ['a.png', 'notes.txt']}))
    with pytest.raises(DatasetLabelError, match='1 files without an image extension'): read_image_table(tmp_path/'data'/'txt.csv')
    layouts.write_table(tmp_path/'data'/'semi.csv', pd.DataFrame({'image': ['a.png', 'b.png'], 'y': [1, None]}), sep=';')
    semi = read_image_table(tmp_path/'data'/'semi.csv', label_cols='y', read_kwargs={'sep': ';'})
    assert len(semi) == 2 and semi.y.isna().tolist() == [False, True]  # an empty label is kept, not dropped

def test_reader_for(tmp_path):
    layouts.tiny_images(tmp_path/'pool', ['a.jpg', 'sub/b.jpg'])
    assert len(reader_for('image_folder', {'glob': '*'})(tmp_path/'pool')) == 1
    assert reader_for('eyediseases4class') is not None
    with pytest.raises(ValueError, match="'root' is the root, given apart"): reader_for('image_folder', {'root': tmp_path})
    with pytest.raises(ValueError, match='no read_nope'): reader_for('nope')

def test_own_readers_are_run_readers():
    "The experiments' reader check (`fundus_ssl.runs.is_reader`) accepts the three by name."
    from fundus_ssl.runs import is_reader
    for name in ('image_folder', 'class_folders', 'image_table'): assert is_reader()(name) is None, name

OWN_READERS = [read_image_folder, read_class_folders, read_image_table]

@pytest.mark.parametrize('reader', OWN_READERS, ids=lambda f: f.__name__)
def test_own_readers_missing_and_empty_root(tmp_path, reader):
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{tmp_path/'absent'}: ") + '.*not found(.|\n)*Expected layout'):
        reader(tmp_path/'absent')
    with pytest.raises(DatasetLayoutError, match='Expected layout'): reader(tmp_path)

def test_real_own_readers(tmp_path):
    "EyeDiseases4class as a plain folder and as class folders, ODIR as a table of its paths and labels: the public readers' images."
    root = real('EyeDiseases4class_256')
    public = read_eyediseases4class(root)
    pool = read_image_folder(root)
    assert sorted(pool.image) == sorted(public.image) and len(pool) == 4000
    classes = read_class_folders(root)
    assert (classes.set_index('image').label[public.image].values == public.label.values).all()
    odir = read_odir(real('ODIR-5K'))
    odir[['image', 'label']].assign(image=[str(Path(p).relative_to(fundus_data_root('ODIR-5K'))) for p in odir.image]).to_csv(
        tmp_path/'odir.csv', index=False)
    table = read_image_table(tmp_path/'odir.csv', root=fundus_data_root('ODIR-5K'), label_cols='label')
    check_conventions(table)
    assert table.image.tolist() == odir.image.tolist() and table.label.tolist() == odir.label.tolist()
