"Run an experiment notebook (`nbs/run_*.ipynb`) under papermill as a user would, into a test's folder."
from pathlib import Path
import pytest

NBS = Path(__file__).parents[1]/'nbs'

def run_experiment(name:str, out:Path, **params) -> Path:
    "Execute `nbs/{name}.ipynb` with `params` and `out_dir=out`; the executed copy lands in `out`."
    papermill = pytest.importorskip('papermill')
    papermill.execute_notebook(str(NBS/f'{name}.ipynb'), str(out/f'{name}.ipynb'), kernel_name='python3',
                               progress_bar=False, cwd=str(NBS), parameters=dict(params, out_dir=str(out)))
    return out
