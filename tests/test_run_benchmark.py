"""nbs/run_benchmark.ipynb at its smoke scale on the real datasets (FUNDUS_DATA): every stage and task, the summary with
intervals and the claims, strict JSON; a rerun finds every stage done and trains nothing. To keep CI short it runs two
initialisations (random and MoCo v2); `bench/benchmark_stages.py smoke` runs all six the same way."""
import json, os
from pathlib import Path
import pandas as pd
import pytest

pm = pytest.importorskip('papermill')
NBS = Path(__file__).parents[1]/'nbs'
DATA = os.environ.get('FUNDUS_DATA')
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA, 'EyeDiseases4class_256').is_dir(),
                                reason='FUNDUS_DATA with the benchmark datasets is not set')

def run(out:Path, **params):
    pm.execute_notebook(str(NBS/'run_benchmark.ipynb'), str(out/'run.ipynb'), parameters=dict(out_dir=str(out/'bench'), **params),
                        kernel_name='python3', cwd=str(NBS), progress_bar=False)
    return out/'bench'

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    return run(tmp_path_factory.mktemp('bench'), methods=METHODS, results_dir=str(tmp_path_factory.mktemp('results')))

METHODS = 'random,mocov2'

def test_every_method_and_task_has_three_seeds(smoke):
    cells = pd.read_csv(smoke/'cells.csv')
    assert set(cells.method) == set(METHODS.split(','))
    tasks = {'eyediseases4class_linear', 'eyediseases4class_fine_tune', 'odir_linear', 'odir_fine_tune', 'retinamnist_linear',
             'drive', 'stare_from_drive', 'stare_from_drive_native', 'drions_disc', 'representation'}
    assert tasks <= set(cells.task)
    per_cell = cells.groupby(['method', 'task', 'fraction', 'metric']).seed.nunique()
    assert (per_cell >= 3).all(), per_cell[per_cell < 3]
    assert set(cells[cells.task == 'drive'].fraction) == {0.05, 0.25, 1.0}   # 1, 5 and 20 of DRIVE's 20 training images
    assert set(cells[cells.task == 'eyediseases4class_linear'].fraction) == {0.01, 0.1, 1.0}

def test_summary_claims_and_metrics(smoke):
    s = pd.read_csv(smoke/'summary.csv')
    assert {'mean', 'lo', 'hi', 'diff', 'verdict'} <= set(s.columns)
    assert s[s.method != 'random'].verdict.isin(['better', 'worse', 'no difference', 'too few seeds']).all()
    claims = pd.read_csv(smoke/'claims.csv')
    assert len(claims) == 4 and claims.verdict.notna().all()
    not_run = claims[claims.verdict.str.startswith('not run')]
    # Kalapos's claim (label efficiency) and Srinivasan's (robustness) need only MoCo v2 and random init; Yap's needs SWCL, Hassanpour's the local variant
    assert sorted(not_run.paper.str.split().str[0]) == ['Hassanpour', 'Yap'], claims[['paper', 'verdict']]
    m = json.loads((smoke/'metrics.json').read_text(), parse_constant=lambda c: pytest.fail(f'non-strict JSON: {c}'))
    assert m['scale'] == 'smoke' and m['commit'] and m['n_values'] == len(pd.read_csv(smoke/'cells.csv'))
    assert m['pretraining']['mocov2']['images_per_s'] > 0 and 0 <= m['pretraining']['mocov2']['data_wait_share'] < 1

def test_history_csv(smoke):
    "history.csv: one row per epoch of every downstream training (a stage each), and each pretraining's in its folder."
    h = pd.read_csv(smoke/'history.csv')
    assert list(h.columns[:4]) == ['epoch', 'stage', 'train_loss', 'valid_loss'] and list(h.columns[-3:]) == ['lr', 'images_per_s', 'seconds']
    epochs = h.groupby('stage', sort=False).epoch.apply(list)
    assert all(e == list(range(1, len(e) + 1)) for e in epochs)   # one row per epoch, none twice
    # per method: eyediseases4class 3 fractions x 3 seeds x (linear, fine_tune), odir 3 seeds x 2, retinamnist 3 x linear, drive 3 sizes x 3, drions 3
    assert len(epochs) == 2 * (18 + 6 + 3 + 9 + 3)
    for m in METHODS.split(','):   # smoke: 10 probe epochs; fine-tuning 1 of the head + 2; 1 U-Net epoch
        assert [len(epochs[f'{t} {m} fraction=1.0 seed=0']) for t in ('eyediseases4class linear', 'eyediseases4class fine_tune', 'odir fine_tune', 'retinamnist linear')] == [10, 3, 3, 10]
        assert len(epochs[f'drive {m} n=20 seed=0']) == len(epochs[f'drions {m} seed=0']) == 1
    tuned = h[h.stage.str.contains('fine_tune')]
    assert tuned[['train_loss', 'valid_loss', 'lr', 'images_per_s', 'seconds']].notna().all().all()
    p = pd.read_csv(smoke/'pretrain'/'mocov2'/'history.csv')
    assert p['epoch'].tolist() == [1] and p['stage'].tolist() == ['pretrain'] and (p['images_per_s'] > 0).all()

def test_encoders_load_in_plain_timm_and_the_unet(smoke):
    import timm, torch
    from fundus_ssl.segmentation import unet_model
    for method in ('mocov2',):
        f = smoke/'pretrain'/method/'encoder.safetensors'
        enc = timm.create_model('resnet10t', pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(f)))
        assert enc.eval()(torch.rand(2, 3, 32, 32)).shape == (2, enc.num_features)
        assert unet_model(f, n_classes=2)(torch.rand(1, 3, 64, 64)).shape[-2:] == (64, 64)

def test_rerun_finds_everything_done(smoke, tmp_path):
    before = {f: f.stat().st_mtime_ns for f in [*(smoke/'cells').rglob('*.csv'), smoke/'history.csv']}
    run(smoke.parent, methods=METHODS)   # same out_dir: every pretraining and every cell is done
    assert {f: f.stat().st_mtime_ns for f in [*(smoke/'cells').rglob('*.csv'), smoke/'history.csv']} == before
    assert 'done' in (smoke.parent/'run.ipynb').read_text()

def test_the_newer_methods_pretrain_in_the_benchmark(tmp_path):
    "SimCLR, Barlow Twins, VICReg and DINO are initialisations of the benchmark too: each pretrains on the pool and exports."
    new = ['simclr', 'barlow_twins', 'vicreg', 'dino']
    bench = run(tmp_path, methods=','.join(['random', *new]), stages='pretrain')
    for m in new:
        assert (bench/'pretrain'/m/'encoder.safetensors').stat().st_size > 0, m
        assert json.loads((bench/'pretrain'/m/'metrics.json').read_text())['method'] == m
