"nbs/run_transfer.ipynb runs end to end under papermill with tiny settings and writes its tables, figures and metrics."
import json
from pathlib import Path
import pandas as pd
import pytest

from experiments import run_experiment

# 32 images (16 patients, 4 held out), 32 px; a 1-epoch MoCo encoder against random init; 2 fractions x 1 seed
TINY = dict(n_images=32, image_size=32, batch_size=8, valid_pct=0.25, arch='test_resnet', pretrain_epochs=1,
            linear_epochs=10, knn_k=5, finetune_epochs=1, freeze_epochs=1, fractions=[0.5, 1.0], seeds=[0],
            hierarchical_ns=[0, 1], n_boot=50, seed=0)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('transfer')
    run_experiment('run_transfer', out, **TINY)
    return out, json.loads((out/'metrics.json').read_text())


def test_outputs(run):
    out, m = run
    for f in ('protocols.csv', 'efficiency_runs.csv', 'efficiency_summary.csv', 'efficiency_curves.csv', 'convergence.csv',
              'hierarchical_runs.csv', 'hierarchical_convergence.csv', 'label_efficiency.png', 'convergence.png',
              'hierarchical.png', 'encoders/moco.safetensors'):
        assert (out/f).stat().st_size > 0, f
    assert m['task'] == 'binary' and m['metric'] == 'auc' and m['reference'] == 'random'
    assert m['data']['n_train'] == 24 and m['data']['n_valid'] == 8
    assert m['encoders']['moco'].endswith('moco.safetensors') and m['seconds'] > 0


def test_tables(run):
    out, m = run
    p = pd.read_csv(out/'protocols.csv')
    assert sorted(zip(p.encoder, p.protocol)) == sorted((e, q) for e in ('random', 'moco') for q in ('linear', 'knn', 'fine_tune'))
    assert ((p.auc_low <= p.auc) & (p.auc <= p.auc_high)).all()
    runs = pd.read_csv(out/'efficiency_runs.csv')
    assert len(runs) == 2 * 2 and set(runs.fraction) == {0.5, 1.0}
    assert runs.groupby('fraction').n_labels.first().tolist() == sorted(runs.n_labels.unique())
    s = pd.read_csv(out/'efficiency_summary.csv')
    assert (s.loc[s.init == 'random', 'gain'] == 0).all()
    curves = pd.read_csv(out/'efficiency_curves.csv')
    assert len(curves) == 4 * 2  # 4 runs x (1 frozen + 1) epochs
    h = pd.read_csv(out/'hierarchical_convergence.csv')
    assert h.ssl_epochs.tolist() == [0, 1] and set(h.columns) >= {'epochs', 'steps', 'reached', 'speedup'}
    assert len(m['protocols']) == 6 and len(m['label_efficiency']) == 4 and len(m['hierarchical']) == 2


# ---- runs that fail before any work, and an out_dir that is never written over unasked (fundus_ssl.runs)
from experiments import experiment_error, snapshot

def test_history_csv(run):
    "history.csv: one row per epoch of every training, each run of the sweeps a stage of its own."
    out, m = run
    h = pd.read_csv(out/'history.csv')
    assert list(h.columns[:4]) == ['epoch', 'stage', 'train_loss', 'valid_loss'] and list(h.columns[-3:]) == ['lr', 'images_per_s', 'seconds']
    n = pd.read_csv(out/'efficiency_runs.csv').groupby('fraction').n_labels.first().tolist()
    expected = {'pretrain moco': 1, 'linear random': 10, 'fine_tune random': 2, 'linear moco': 10, 'fine_tune moco': 2,   # head 1 + all 1
                **{f'efficiency fine_tune {e} n_labels={k} seed=0': 2 for k in n for e in ('random', 'moco')},
                'hierarchical pretrain N=1': 1, **{f'hierarchical fine_tune N={k} n_labels=24 seed=0': 2 for k in (0, 1)}}
    assert h.groupby('stage', sort=False)['epoch'].apply(list).to_dict() == {s: list(range(1, k + 1)) for s, k in expected.items()}
    fitted = h[~h.stage.str.startswith('linear')]
    assert fitted[['train_loss', 'valid_loss', 'lr', 'images_per_s', 'seconds']].notna().all().all()
    assert h.loc[h.stage.str.startswith(('linear', 'fine_tune', 'efficiency', 'hierarchical fine_tune')), 'auc'].between(0, 1).all()


def test_same_settings_are_refused_without_overwrite(run, tmp_path):
    out, _ = run
    before = snapshot(out)
    err = experiment_error('run_transfer', out, tmp_path/'nb.ipynb', **TINY)
    assert err.startswith('OutDirError: ') and 'run_transfer cannot continue a run: pass overwrite=True' in err
    assert snapshot(out) == before

def test_unknown_parameter_fails_at_once(tmp_path):
    err = experiment_error('run_transfer', tmp_path/'out', tmp_path/'nb.ipynb', **TINY, fraction=[0.5])
    assert err.startswith('ParameterError: ') and "unknown parameter 'fraction' (did you mean 'fractions'?)" in err
    assert not (tmp_path/'out').exists()

def test_misspelled_values_fail_before_any_work(tmp_path):
    err = experiment_error('run_transfer', tmp_path/'out', tmp_path/'nb.ipynb',
                           **dict(TINY, protocols=['linear', 'knnn'], metric='aucc', arch='resnet_nope', encoders={'random': 'random', 'x': 'nope.safetensors'}))
    for s in ("protocols=['linear', 'knnn']", "metric='aucc'", "arch='resnet_nope'", "'nope.safetensors'"): assert s in err, (s, err)
    assert not (tmp_path/'out').exists()

def test_bad_reader_kwargs_fail_before_any_work(tmp_path):
    (tmp_path/'t.csv').write_text('image,label\n')
    err = experiment_error('run_transfer', tmp_path/'out', tmp_path/'nb.ipynb', **dict(TINY, reader='image_table', root=str(tmp_path/'t.csv'),
                           reader_kwargs={'image_column': 'path'}))
    assert err.startswith('ParameterError: ') and "reader_kwargs ['image_column'] of read_image_table" in err, err
    assert not (tmp_path/'out').exists()

def test_runs_on_a_table_of_your_own(tmp_path):
    "A CSV of image paths and grades (here of synthetic images) goes in through reader='image_table' and its reader_kwargs."
    from fundus_ssl.synthetic import write_eyepacs_like
    from fundus_ssl.datasets import read_eyepacs
    df = read_eyepacs(write_eyepacs_like(tmp_path/'src', n_patients=16, size=64, seed=0))
    pd.DataFrame({'path': df.image, 'grade': df.dr_grade}).to_csv(tmp_path/'mine.csv', index=False)
    out = tmp_path/'out'
    run_experiment('run_transfer', out, tmp_path/'nb.ipynb', **dict(TINY, reader='image_table', root=str(tmp_path/'mine.csv'), label='grade >= 2',
                   reader_kwargs={'image_col': 'path', 'label_cols': ['grade']}, encoders={'random': 'random'}, protocols=['linear'],
                   hierarchical_from=None, fractions=[1.0]))
    m = json.loads((out/'metrics.json').read_text())
    assert m['data']['reader'] == 'image_table' and m['data']['reader_kwargs'] == {'image_col': 'path', 'label_cols': ['grade']}
    assert m['data']['n_train'] + m['data']['n_valid'] == len(df)
