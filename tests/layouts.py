"""Miniature copies of each public fundus dataset's distributed layout (exact folder and file names, real
label-file formats, 8x8 images written with PIL), for testing `fundus_ssl.datasets`.

Each `write_<dataset>(root)` writes under `root` and returns it. Labels follow simple documented patterns
so tests can assert exact values."""
from __future__ import annotations
import gzip, io
from pathlib import Path
import numpy as np, pandas as pd
from PIL import Image

def tiny(path, mode:str='RGB', value:int=0) -> Path:
    "Write an 8x8 image at `path` in the format its extension names (any case; `.ppm.gz` gzipped)."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, (8, 8), value)
    if path.name.lower().endswith('.gz'):
        buf = io.BytesIO(); img.save(buf, format='PPM'); path.write_bytes(gzip.compress(buf.getvalue()))
    else: img.save(path, format=Image.registered_extensions()[path.suffix.lower()])
    return path

def tiny_masks(folder, names): return [tiny(Path(folder)/n, 'L', 255) for n in names]
def tiny_images(folder, names): return [tiny(Path(folder)/n) for n in names]

def write_table(path, df:pd.DataFrame, **kwargs) -> Path:
    "Write `df` as csv, or as an Excel workbook for .xls/.xlsx (an .xls holds xlsx content: pandas reads it by content)."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in ('.xls', '.xlsx'):
        buf = io.BytesIO(); df.to_excel(buf, index=False, **kwargs); path.write_bytes(buf.getvalue())
    else: df.to_csv(path, index=False, **kwargs)
    return path

# ---------------------------------------------------------------- vessels
def write_drive(root, train_ids=(21, 22, 23), test_ids=(1, 2), test_manuals=True) -> Path:
    "DRIVE: `training/` and `test/` with images (.tif), 1st_manual (.gif), 2nd_manual (test), mask (.gif)."
    root = Path(root)
    for folder, ids in (('training', train_ids), ('test', test_ids)):
        d = root/folder
        tiny_images(d/'images', [f'{i:02d}_{folder}.tif' for i in ids])
        tiny_masks(d/'mask', [f'{i:02d}_{folder}_mask.gif' for i in ids])
        if folder == 'training' or test_manuals:
            tiny_masks(d/'1st_manual', [f'{i:02d}_manual1.gif' for i in ids])
        if folder == 'test' and test_manuals:
            tiny_masks(d/'2nd_manual', [f'{i:02d}_manual2.gif' for i in ids])
    return root

STARE_IDS = ('im0001', 'im0002', 'im0003', 'im0004', 'im0005', 'im0044', 'im0077', 'im0081', 'im0082',
             'im0139', 'im0162', 'im0163')  # 12 of the 20 labeled ids: default split 10 train / 2 test

def write_stare(root, ids=STARE_IDS, gz=True) -> Path:
    "STARE: `stare-images/im0001.ppm.gz`, `labels-ah/im0001.ah.ppm.gz`, `labels-vk/im0001.vk.ppm.gz`."
    root, ext = Path(root), '.ppm.gz' if gz else '.ppm'
    tiny_images(root/'stare-images', [f'{i}{ext}' for i in ids])
    tiny_masks(root/'labels-ah', [f'{i}.ah{ext}' for i in ids])
    tiny_masks(root/'labels-vk', [f'{i}.vk{ext}' for i in ids])
    return root

def write_chase_db1(root, n_children=14) -> Path:
    "CHASE_DB1, flat: `Image_01L.jpg`, `Image_01L_1stHO.png`, `Image_01L_2ndHO.png` for each child and eye."
    root = Path(root)
    for c in range(1, n_children+1):
        for e in 'LR':
            tiny(root/f'Image_{c:02d}{e}.jpg')
            tiny_masks(root, [f'Image_{c:02d}{e}_1stHO.png', f'Image_{c:02d}{e}_2ndHO.png'])
    return root

def write_hrf(root, n=6) -> Path:
    "HRF: `images/01_h.jpg, 01_g.jpg, 01_dr.JPG` (upper case as distributed), `manual1/*.tif`, `mask/*_mask.tif`."
    root = Path(root)
    for i in range(1, n+1):
        for g, ext in (('h', '.jpg'), ('g', '.jpg'), ('dr', '.JPG')):
            tiny(root/'images'/f'{i:02d}_{g}{ext}')
            tiny_masks(root, [f'manual1/{i:02d}_{g}.tif', f'mask/{i:02d}_{g}_mask.tif'])
    return root

# ---------------------------------------------------------------- IDRiD
IDRID_LESIONS = {'MA': '1. Microaneurysms', 'HE': '2. Haemorrhages', 'EX': '3. Hard Exudates',
                 'SE': '4. Soft Exudates', 'OD': '5. Optic Disc'}

def write_idrid_segmentation(root, train=('IDRiD_01', 'IDRiD_02'), test=('IDRiD_55',), absent=(('IDRiD_02', 'SE'),)) -> Path:
    "IDRiD part A under `root/A. Segmentation`; the (image, lesion) pairs in `absent` have no file."
    base = Path(root)/'A. Segmentation'
    for folder, ids in (('a. Training Set', train), ('b. Testing Set', test)):
        tiny_images(base/'1. Original Images'/folder, [f'{i}.jpg' for i in ids])
        for code, sub in IDRID_LESIONS.items():
            tiny_masks(base/'2. All Segmentation Groundtruths'/folder/sub,
                       [f'{i}_{code}.tif' for i in ids if (i, code) not in absent])
    return root

def idrid_grading_labels(ids):
    "Grades cycling 0-4 and 0-2 over `ids`."
    return pd.DataFrame({'Image name': list(ids), 'Retinopathy grade': [i % 5 for i in range(len(ids))],
                         'Risk of macular edema ': [i % 3 for i in range(len(ids))]})

def write_idrid_grading(root, n_train=4, n_test=2) -> Path:
    "IDRiD part B under `root/B. Disease Grading`; test reuses the training file names (IDRiD_001...)."
    base = Path(root)/'B. Disease Grading'
    for folder, csv, n in (('a. Training Set', 'a. IDRiD_Disease Grading_Training Labels.csv', n_train),
                           ('b. Testing Set', 'b. IDRiD_Disease Grading_Testing Labels.csv', n_test)):
        ids = [f'IDRiD_{i:03d}' for i in range(1, n+1)]
        tiny_images(base/'1. Original Images'/folder, [f'{i}.jpg' for i in ids])
        labels = idrid_grading_labels(ids)
        labels[''] = None  # the real files carry empty trailing columns
        write_table(base/'2. Groundtruths'/csv, labels)
    return root

# ---------------------------------------------------------------- disc / cup
def write_refuge(root) -> Path:
    "REFUGE: training (2 glaucoma, 3 not), validation (4 with Fovea_locations.xlsx), test (2: G, N); images and disc/cup masks."
    root = Path(root)
    tiny_images(root/'REFUGE-Training400/Training400/Glaucoma', ['g0001.jpg', 'g0002.jpg'])
    tiny_images(root/'REFUGE-Training400/Training400/Non-Glaucoma', ['n0001.jpg', 'n0002.jpg', 'n0003.jpg'])
    tiny_masks(root/'Annotation-Training400/Disc_Cup_Masks/Glaucoma', ['g0001.bmp', 'g0002.bmp'])
    tiny_masks(root/'Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma', ['n0001.bmp', 'n0002.bmp', 'n0003.bmp'])
    val = [f'V{i:04d}' for i in range(1, 5)]
    tiny_images(root/'REFUGE-Validation400', [f'{v}.jpg' for v in val])
    tiny_masks(root/'REFUGE-Validation400-GT/Disc_Cup_Masks', [f'{v}.bmp' for v in val])
    write_table(root/'REFUGE-Validation400-GT/Fovea_locations.xlsx',
                pd.DataFrame({'ID': range(1, 5), 'ImgName': [f'{v}.jpg' for v in val], 'Fovea_X': 1.0,
                              'Fovea_Y': 2.0, 'Glaucoma Label': [1, 0, 0, 0]}))
    tiny_images(root/'Test400', ['T0001.jpg', 'T0002.jpg'])
    tiny_masks(root/'REFUGE-Test-GT/Disc_Cup_Masks/G', ['T0001.bmp'])
    tiny_masks(root/'REFUGE-Test-GT/Disc_Cup_Masks/N', ['T0002.bmp'])
    return root

def write_drishti_gs1(root, train=('drishtiGS_002', 'drishtiGS_004'), test=('drishtiGS_001',)) -> Path:
    "Drishti-GS1: `Drishti-GS1_files/{Training,Test}/Images` and the OD/cup soft maps under `GT/` (`Test_GT/`)."
    base = Path(root)/'Drishti-GS1_files'
    for folder, gt, ids in (('Training', 'GT', train), ('Test', 'Test_GT', test)):
        tiny_images(base/folder/'Images', [f'{i}.png' for i in ids])
        for i in ids:
            tiny_masks(base/folder/gt/i/'SoftMap', [f'{i}_ODsegSoftmap.png', f'{i}_cupsegSoftmap.png'])
            (base/folder/gt/i/'AvgBoundary').mkdir(parents=True, exist_ok=True)
            (base/folder/gt/i/'AvgBoundary'/f'{i}_ODAvgBoundary.txt').write_text('1 2\n')
    return root

def write_odoc_multidomain(root, names=None) -> Path:
    "The disc/cup crops: `Domain{1..4}/{train,test}/ROIs/{image,mask}/` with one image per domain and split."
    root = Path(root)
    names = names or {1: ('gdrishtiGS_002', 'gdrishtiGS_001'), 2: ('G-1-L', 'G-2-R'), 3: ('g0003', 'g0001'), 4: ('V0001', 'V0002')}
    for d, (tr, te) in names.items():
        for split, n in (('train', tr), ('test', te)):
            tiny_images(root/f'Domain{d}/{split}/ROIs/image', [f'{n}.png'])
            tiny_masks(root/f'Domain{d}/{split}/ROIs/mask', [f'{n}.png'])
    return root

def write_drions_db(root, train=(1, 2, 3), test=(91, 92)) -> Path:
    "DRIONS-DB as paired folders: `{train,test}/{image,groundtruth}/image_NNN.jpg`."
    root = Path(root)
    for split, ids in (('train', train), ('test', test)):
        tiny_images(root/split/'image', [f'image_{i:03d}.jpg' for i in ids])
        tiny_masks(root/split/'groundtruth', [f'image_{i:03d}.jpg' for i in ids])
    return root

# ---------------------------------------------------------------- grading
def write_messidor(root, bases=('Base11', 'Base12'), n=10) -> Path:
    "Messidor: `BaseXX/*.tif` with `Annotation_BaseXX.xls` (the 2nd base uses 'Annotation BaseXX.xls'); grades cycle 0-3 and 0-2."
    root = Path(root)
    for b, base in enumerate(bases):
        names = [f'2005{b:02d}{i:02d}_00000_0100_PP.tif' for i in range(n)]
        tiny_images(root/base, names)
        sep = '_' if b % 2 == 0 else ' '
        write_table(root/base/f'Annotation{sep}{base}.xls',
                    pd.DataFrame({'Image name': names, 'Ophthalmologic department': 'LaTIM - CHU de BREST',
                                  'Retinopathy grade': [i % 4 for i in range(n)],
                                  'Risk of macular edema ': [i % 3 for i in range(n)]}))
    return root

def write_messidor2(root, n_exams=5) -> Path:
    "Messidor-2: `IMAGES/` (odd images upper-case .JPG), `messidor_data.csv` (the last image ungradable), `messidor-2.csv` pairs."
    root = Path(root)
    names = [f'IM{i:06d}.jpg' for i in range(1, 2*n_exams+1)]
    tiny_images(root/'IMAGES', [n if i % 2 == 0 else n[:-4]+'.JPG' for i, n in enumerate(names)])
    g = len(names)-1
    write_table(root/'messidor_data.csv', pd.DataFrame({
        'image_id': names, 'adjudicated_dr_grade': [i % 5 if i < g else None for i in range(len(names))],
        'adjudicated_dme': [i % 2 if i < g else None for i in range(len(names))],
        'adjudicated_gradable': [1]*g + [0]}))
    (root/'messidor-2.csv').write_text(''.join(f'{a};{b}\n' for a, b in zip(names[::2], names[1::2])))
    return root

def write_eyepacs(root, n_patients=3, n_without_image=2, folder='train', test=True) -> Path:
    "EyePACS: `trainLabels.csv` (image,level) for `n_patients`+`n_without_image` patients, images in `folder/` for the first `n_patients`; test set likewise."
    root = Path(root)
    pids = list(range(10, 10+n_patients+n_without_image))
    names = [f'{p}_{e}' for p in pids for e in ('left', 'right')]
    write_table(root/'trainLabels.csv', pd.DataFrame({'image': names, 'level': [i % 5 for i in range(len(names))]}))
    tiny_images(root/folder, [f'{n}.jpeg' for n in names[:2*n_patients]])
    if test:
        tnames = ['1_left', '1_right']
        write_table(root/'retinopathy_solution.csv', pd.DataFrame({'image': tnames, 'level': [0, 2], 'Usage': ['Public', 'Private']}))
        tiny_images(root/'test', [f'{n}.jpeg' for n in tnames])
    return root

def write_aptos2019(root, n_train=5, n_test=2) -> Path:
    "APTOS 2019: `train.csv` (id_code,diagnosis), `train_images/*.png`, `test.csv` (id_code), `test_images/*.png`."
    root = Path(root)
    tr, te = [f'{i:012x}' for i in range(n_train)], [f'{i+100:012x}' for i in range(n_test)]
    write_table(root/'train.csv', pd.DataFrame({'id_code': tr, 'diagnosis': [i % 5 for i in range(n_train)]}))
    write_table(root/'test.csv', pd.DataFrame({'id_code': te}))
    tiny_images(root/'train_images', [f'{i}.png' for i in tr]); tiny_images(root/'test_images', [f'{i}.png' for i in te])
    return root

def write_ddr(root) -> Path:
    "DDR: `DR_grading/{train,valid,test}/*.jpg` and `{split}.txt` ('name.jpg grade', 5 = ungradable)."
    base = Path(root)/'DR_grading'
    for split, grades in (('train', [0, 1, 2, 3, 4, 5]), ('valid', [0, 2]), ('test', [1, 5])):
        names = [f'007-{split[:2]}{i:02d}-000.jpg' for i in range(len(grades))]
        tiny_images(base/split, names)
        (base/f'{split}.txt').write_text(''.join(f'{n} {g}\n' for n, g in zip(names, grades)))
    return root

def write_retinamnist(root, sizes=(6, 2, 3)) -> Path:
    "RetinaMNIST: `retinamnist.npz` with {train,val,test}_{images,labels}; image i of a split is filled with value i, label i % 5."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in zip(('train', 'val', 'test'), sizes):
        arrays[f'{split}_images'] = np.stack([np.full((28, 28, 3), i, np.uint8) for i in range(n)])
        arrays[f'{split}_labels'] = (np.arange(n) % 5).astype(np.uint8)[:, None]
    np.savez(root/'retinamnist.npz', **arrays)
    return root

# ---------------------------------------------------------------- multi-disease
ODIR_COLS = ['ID', 'Patient Age', 'Patient Sex', 'Left-Fundus', 'Right-Fundus', 'Left-Diagnostic Keywords',
             'Right-Diagnostic Keywords', *'NDGCAHMO']

# (left keywords, right keywords, N..O): normal pairs, lens dust, full-width comma, an anterior segment image
ODIR_PATIENTS = [
    ('normal fundus', 'normal fundus', [1, 0, 0, 0, 0, 0, 0, 0]),
    ('cataract', 'normal fundus，lens dust', [0, 0, 0, 1, 0, 0, 0, 0]),
    ('lens dust', 'moderate non proliferative retinopathy，lens dust', [0, 1, 0, 0, 0, 0, 0, 0]),
    ('glaucoma,suspected glaucoma', 'anterior segment image', [0, 0, 1, 0, 0, 0, 0, 0]),
]

def odir_annotation(ids=(0, 1, 2, 3)) -> pd.DataFrame:
    "The OIA-ODIR annotation sheet for `ODIR_PATIENTS` with patient ids `ids`."
    return pd.DataFrame([[i, 60+i, 'Female', f'{i}_left.jpg', f'{i}_right.jpg', l, r, *lab]
                         for i, (l, r, lab) in zip(ids, ODIR_PATIENTS)], columns=ODIR_COLS)

def write_odir_oia(root) -> Path:
    "OIA-ODIR: `Training Set/{Images,Annotation}` (the 4 `ODIR_PATIENTS`) and an `Off-site Test Set` (patients 10-11)."
    root = Path(root)
    for folder, sheet, ids in (('Training Set', 'training annotation (English).xlsx', (0, 1, 2, 3)),
                               ('Off-site Test Set', 'off-site test annotation (English).xlsx', (10, 11))):
        ann = odir_annotation(ids)
        write_table(root/folder/'Annotation'/sheet, ann)
        tiny_images(root/folder/'Images', [*ann['Left-Fundus'], *ann['Right-Fundus']])
    return root

def write_odir_kaggle(root, without_image=('3_left.jpg',)) -> Path:
    "The Kaggle ODIR-5K mirror: `full_df.csv` (one row per image) and `preprocessed_images/` (lacking `without_image`)."
    root, ann = Path(root), odir_annotation()
    rows = [dict(r, filepath=f'../input/ODIR-5K/Training Images/{r[side+"-Fundus"]}', labels="['N']",
                 target='[1, 0, 0, 0, 0, 0, 0, 0]', filename=r[side+'-Fundus'])
            for r in ann.to_dict('records') for side in ('Left', 'Right')]
    df = pd.DataFrame(rows)
    write_table(root/'full_df.csv', df)
    tiny_images(root/'preprocessed_images', [f for f in df.filename if f not in without_image])
    return root

RFMID_COLS = ['Disease_Risk', 'DR', 'ARMD', 'MH']  # a subset of the 46 label columns

def write_rfmid(root) -> Path:
    "RFMiD: `1. Original Images/{a. Training Set,...}/{ID}.png` and `2. Groundtruths/*_Labels.csv` (ID + `RFMID_COLS`)."
    root = Path(root)
    for folder, csv, ids in (('a. Training Set', 'a. RFMiD_Training_Labels.csv', (1, 2, 3)),
                             ('b. Validation Set', 'b. RFMiD_Validation_Labels.csv', (1, 2)),
                             ('c. Testing Set', 'c. RFMiD_Testing_Labels.csv', (1,))):
        tiny_images(root/'1. Original Images'/folder, [f'{i}.png' for i in ids])
        write_table(root/'2. Groundtruths'/csv, pd.DataFrame(
            {'ID': ids, **{c: [int(i % (k+2) == 0) for i in ids] for k, c in enumerate(RFMID_COLS)}}))
    return root

def write_eyediseases4class(root, n=3, levels=True) -> Path:
    "A folder per class (`cataract`, `diabetic_retinopathy`, `glaucoma`, `normal`), `n` images each, and `eyepacs_levels.csv`."
    root = Path(root)
    names = {'cataract': [f'_{i}_100{i}.jpg' for i in range(n)], 'glaucoma': [f'Glaucoma_{i:03d}.png' for i in range(n)],
             'normal': [f'{i}_left.jpg' for i in range(n)], 'diabetic_retinopathy': [f'1000{i}_right.jpeg' for i in range(n)]}
    for c, ns in names.items(): tiny_images(root/c, ns)
    if levels:
        dr = names['diabetic_retinopathy']
        write_table(root/'eyepacs_levels.csv', pd.DataFrame(
            {'relpath': [f'diabetic_retinopathy/{f}' for f in dr], 'eyepacs_image': [f[:-5] for f in dr],
             'level': [i % 5 for i in range(len(dr))]}))
    return root
