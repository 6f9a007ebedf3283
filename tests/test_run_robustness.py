"run_robustness.ipynb end to end with papermill and tiny parameters: every table and figure is written and consistent."
import json
from pathlib import Path
import pandas as pd
import pytest

from experiments import run_experiment
TINY = dict(n_synthetic=48, valid_pct=0.4, inits={'random': 'random', 'mocov2': 'mocov2'}, encoder='test_resnet', image_size=64,
            epochs=2, batch_size=8, pretrain_epochs=1, kinds=['gaussian_blur', 'jpeg'], severities=[1, 3], metric='accuracy',
            n_interpret=2, ig_steps=4)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('robustness')
    return run_experiment('run_robustness', out, **TINY)

def test_outputs_written(run):
    for f in ['metrics.json', 'robustness.csv', 'corruption_errors.csv', 'representation.csv', 'cka_models.csv', 'attribution.csv',
              'distortions.png', 'robustness.png', 'layer_statistics.png', 'spectra.png', 'cka_models.png', 'cka_layers.png',
              'attributions.png', 'encoders/mocov2.safetensors']:
        assert (run/f).is_file() and (run/f).stat().st_size > 0, f

def test_history_csv(run):
    "history.csv: one row per epoch of the in-notebook pretraining (1 epoch) and of each fine-tuning (2 epochs)."
    import pandas as pd
    h = pd.read_csv(run/'history.csv')
    assert list(h.columns) == ['epoch', 'stage', 'train_loss', 'valid_loss', 'accuracy', 'lr', 'images_per_s', 'seconds']
    assert h.groupby('stage', sort=False)['epoch'].apply(list).to_dict() == {
        'fine_tune random': [1, 2], 'pretrain mocov2': [1], 'fine_tune mocov2': [1, 2]}
    assert h.drop(columns='accuracy').notna().all().all() and h.loc[h.stage.str.startswith('fine_tune'), 'accuracy'].between(0, 1).all()

def test_robustness_tables(run):
    curves = pd.read_csv(run/'robustness.csv')
    assert len(curves) == 2 * 2 * 3  # models x kinds x (clean + 2 severities)
    assert curves['metric'].between(0, 1).all()
    ce = pd.read_csv(run/'corruption_errors.csv', index_col=0)
    ref = ce.loc['random'].dropna()
    assert len(ref) and (ref - 1).abs().max() < 1e-9  # the reference's CE is 1 wherever defined

def test_metrics_json(run):
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['results']) == {'random', 'mocov2'}
    r = m['results']['random']
    assert 0 <= r['clean'] <= 1 and r['effective_rank'] >= 1 and -1e-6 <= r['cka_to_init'] <= 1 + 1e-6
    assert set(r['attribution']) == {'Grad-CAM', 'integrated gradients'}
    assert set(r['attribution']['Grad-CAM']) == {'small', 'large', 'all'}
    rep = pd.read_csv(run/'representation.csv')
    assert set(rep['model']) == {'random', 'mocov2', 'random (init)', 'mocov2 (init)'}
    cka = pd.read_csv(run/'cka_models.csv', index_col=0)
    assert abs(cka.loc['random', 'random'] - 1) < 1e-6

# ---- runs that fail before any work, and an out_dir that is never written over unasked (fundus_ssl.runs)
from experiments import experiment_error, snapshot

def test_other_settings_are_refused(run, tmp_path):
    before = snapshot(run)
    err = experiment_error('run_robustness', run, tmp_path/'nb.ipynb', **dict(TINY, metric='auc'))
    assert err.startswith('OutDirError: ') and "metric: 'accuracy' in out_dir's run, 'auc' now" in err
    assert snapshot(run) == before

def test_unknown_parameter_fails_at_once(tmp_path):
    err = experiment_error('run_robustness', tmp_path/'out', tmp_path/'nb.ipynb', **TINY, severity=[1])
    assert err.startswith('ParameterError: ') and "unknown parameter 'severity' (did you mean 'severities'?)" in err
    assert not (tmp_path/'out').exists()

def test_misspelled_values_fail_before_any_work(tmp_path):
    err = experiment_error('run_robustness', tmp_path/'out', tmp_path/'nb.ipynb', **dict(TINY, kinds=['gaussian_blur', 'jpg'], severities=[6]))
    assert "kinds=['gaussian_blur', 'jpg']" in err and 'severities=[6]' in err
    assert not (tmp_path/'out').exists()
