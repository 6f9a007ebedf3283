"Small synthetic datasets in real distributed layouts, shared by the heavier tests."
from pathlib import Path
import pandas as pd
from fundus_ssl.synthetic import write_eyepacs_like
from fundus_ssl.datasets import read_eyepacs

def referable_eyepacs(folder:Path, n_patients:int, seed:int) -> pd.DataFrame:
    "An EyePACS-like set (96 px) read by `read_eyepacs`, with a binary `referable` column (DR grade >= 2)."
    df = read_eyepacs(write_eyepacs_like(folder, n_patients=n_patients, size=96, seed=seed))
    return df.assign(referable=(df['dr_grade'] >= 2).astype(int))
