"Your own data, made from the real datasets (FUNDUS_DATA) for the experiments' tests: a flat folder of images without labels, and a CSV of paths and labels."
import os, shutil, warnings
from pathlib import Path

FUNDUS_DATA = os.environ.get('FUNDUS_DATA')

def flat_folder(dest:Path, n:int=24) -> Path:
    "`n` EyeDiseases4class images (a share of each class) copied into one folder, no labels; names made unique by their class."
    src = Path(FUNDUS_DATA)/'EyeDiseases4class_256'
    classes = sorted(d for d in src.iterdir() if d.is_dir())
    dest.mkdir(parents=True)
    for c in classes:
        images = [f for f in sorted(c.iterdir()) if f.suffix.lower() in ('.jpg', '.jpeg', '.png')]  # diabetic_retinopathy: .jpeg
        for f in images[:n // len(classes)]: shutil.copy(f, dest/f'{c.name}_{f.name}')
    return dest

def odir_table(path:Path, n:int=24) -> Path:
    "A CSV of `n` ODIR images (absolute paths), half normal and half abnormal: columns image, label (no patient, no eye)."
    from fundus_ssl.datasets import read_odir
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        df = read_odir(Path(FUNDUS_DATA)/'ODIR-5K')
    rows = df.sample(frac=1, random_state=0).groupby('label').head(n // 2)
    rows[['image', 'label']].to_csv(path, index=False)
    return path
