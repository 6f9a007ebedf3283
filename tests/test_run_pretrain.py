"nbs/run_pretrain.ipynb runs end to end under papermill with tiny settings, writes its outputs, and resumes from its checkpoints."
import json, math
from pathlib import Path
import pandas as pd
import pytest
import torch

from experiments import run_experiment
from fundus_ssl.models import create_encoder
from fundus_ssl.checkpoint import checkpoints, read_checkpoint

# 16 images (8 patients, 3 held out): 10 to pretrain on in 2 steps of 4, a queue of 8 keys, 32 px views
TINY = dict(method='mocov2', encoder='test_resnet', n_images=16, image_size=32, batch_size=4, queue_size=8, bn_splits=2,
            knn_k=5, epochs=2, lr=1e-3, seed=0)

def run(out, **params):
    run_experiment('run_pretrain', out, **{**TINY, **params})
    return json.loads((out/'metrics.json').read_text())

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A run stopped after 1 of 2 epochs, then the same run resumed: (out_dir, metrics of the first, metrics of the second)."
    out = tmp_path_factory.mktemp('pretrain')
    first = run(out, stop_after=1)
    saved_after_first = list(checkpoints(out/'checkpoints'))
    history_after_first = (out/'history.csv').read_text()
    second = run(out, resume=True)
    return out, first, second, saved_after_first, history_after_first

def test_metrics(runs):
    out, first, *_ = runs
    assert first['method'] == 'mocov2' and first['epochs'] == 2 and first['epochs_done'] == 1 and first['epochs_trained_now'] == 1
    for k in ('loss_first', 'loss_last', 'valid_loss_first', 'valid_loss_last'):
        assert math.isfinite(first[k]) and first[k] > 0, (k, first[k])
    # MoCo's InfoNCE over 1 positive and K = 8 negatives lies within (0, log 9 + 2/T] for unit vectors
    assert first['loss_first'] < math.log(9) + 2 / 0.2
    for k in ('knn_pretrained', 'knn_random', 'knn_majority'): assert 0 <= first[k] <= 1, (k, first[k])
    # the held-out set holds 6 images: an effective rank lies in [1, 5]
    assert first['data'] == dict(reader='synthetic_eyepacs', root=None, reader_kwargs={}, n_images=16, n_bank=10, n_held_out=6, classes=first['data']['classes'])
    for k in ('effective_rank', 'effective_rank_random'): assert 1 <= first[k] <= 5, (k, first[k])
    assert first['export_ok'] and first['seconds'] > 0
    for f in ('data.png', 'views.png', 'loss.png', 'probe.png', 'spectrum.png', 'features.npz', 'encoder_report.txt'):
        assert (out/f).stat().st_size > 0, f

def test_resume_continues(runs):
    out, first, second, saved_after_first, _ = runs
    assert saved_after_first == [1]
    assert list(checkpoints(out/'checkpoints')) == [1, 2]
    assert second['epochs_done'] == 2 and second['epochs_trained_now'] == 1
    assert [h['epoch'] for h in second['history']] == [1, 2]
    assert second['history'][0] == first['history'][0]  # the first epoch is the checkpointed one, not trained again
    assert second['knn_random'] == first['knn_random']  # the same random encoder to compare with

def test_history_csv_continues(runs):
    "history.csv: one row per epoch; the resumed run keeps the first epoch's row as it was and appends the second."
    out, first, second, _, history_after_first = runs
    text = (out/'history.csv').read_text()
    assert text.startswith(history_after_first) and len(history_after_first.splitlines()) == 2   # header and epoch 1
    h = pd.read_csv(out/'history.csv')
    assert list(h.columns) == ['epoch', 'stage', 'train_loss', 'valid_loss', 'lr', 'images_per_s', 'seconds']
    assert h['epoch'].tolist() == [1, 2] and set(h['stage']) == {'pretrain'}
    assert h['train_loss'].tolist() == pytest.approx([e['loss'] for e in second['history']], rel=1e-6)
    assert h['valid_loss'].tolist() == pytest.approx([e['valid_loss'] for e in second['history']], rel=1e-6)
    assert (h['images_per_s'] > 0).all() and (h['seconds'] > 0).all() and (h['lr'] > 0).all()

def test_exported_encoder_is_the_trained_one(runs):
    out, _, second, *_ = runs
    enc = create_encoder('test_resnet', pretrained=second['encoder_file'])
    model = read_checkpoint(next(reversed(checkpoints(out/'checkpoints').values())))['model']
    sd = enc.model.state_dict()
    assert len(sd) > 10
    for k, v in sd.items(): torch.testing.assert_close(v, model['encoder.model.' + k], msg=k)
    # and not the key network, which lags behind the query network
    assert any(not torch.equal(v, model['key_encoder.model.' + k]) for k, v in sd.items() if v.is_floating_point())

# ---- runs that fail before any work, and an out_dir that is never written over unasked (fundus_ssl.runs)
from experiments import experiment_error, snapshot

def test_resume_is_recorded(runs):
    out, *_ = runs
    rec = json.loads((out/'run.json').read_text())
    assert rec['notebook'] == 'run_pretrain' and rec['parameters']['stop_after'] == 1 and len(rec['resumed']) == 1

def test_other_settings_are_refused(runs, tmp_path):
    out, *_ = runs
    before = snapshot(out)
    err = experiment_error('run_pretrain', out, tmp_path/'nb.ipynb', **{**TINY, 'lr': 2e-3, 'resume': True})
    assert err.startswith('OutDirError: ') and "lr: 0.001 in out_dir's run, 0.002 now" in err
    assert snapshot(out) == before

def test_unknown_parameter_fails_at_once(tmp_path):
    err = experiment_error('run_pretrain', tmp_path/'out', tmp_path/'nb.ipynb', **TINY, knn_labl='eye')
    assert err.startswith('ParameterError: ') and "unknown parameter 'knn_labl' (did you mean 'knn_label'" in err
    assert not (tmp_path/'out').exists()

def test_misspelled_values_fail_before_any_work(tmp_path):
    err = experiment_error('run_pretrain', tmp_path/'out', tmp_path/'nb.ipynb',
                           **{**TINY, 'method': 'mocov3', 'optimizer': 'adamw', 'reader': 'eyepacks', 'aug_overrides': {'p_blurr': 0.}, 'channels': 'grey'})
    for s in ("method='mocov3'", "optimizer='adamw'", "reader='eyepacks'", "(did you mean 'eyepacs'?)", "not 'p_blurr'", "channels='grey'"): assert s in err, (s, err)
    assert not (tmp_path/'out').exists()

# ---- your own data (issue 15): a plain folder of images without labels, a CSV of paths and labels; checked before any work
import os

def test_bad_reader_kwargs_fail_before_any_work(tmp_path):
    err = experiment_error('run_pretrain', tmp_path/'out', tmp_path/'nb.ipynb',
                           **{**TINY, 'reader': 'image_folder', 'root': str(tmp_path), 'knn_label': None, 'reader_kwargs': {'globb': '*.png'}})
    assert err.startswith('ParameterError: ') and "reader_kwargs ['globb'] of read_image_folder" in err, err
    assert not (tmp_path/'out').exists()

FUNDUS_DATA = os.environ.get('FUNDUS_DATA')
needs_data = pytest.mark.skipif(not FUNDUS_DATA, reason='FUNDUS_DATA is unset (the real datasets)')

from own_data import flat_folder, odir_table

def executed_text(notebook:Path) -> str:
    "Everything an executed notebook printed or displayed."
    nb = json.loads(notebook.read_text())
    return ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/markdown', ''))
                   for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))

@pytest.fixture(scope='module')
def own_data(tmp_path_factory):
    d = tmp_path_factory.mktemp('own_data')
    return flat_folder(d/'flat'), odir_table(d/'odir.csv')

@needs_data
def test_runs_on_a_folder_without_labels(own_data, tmp_path):
    "A plain folder of images (reader image_folder), no labels: knn_label None trains, exports and reports without the kNN probe."
    out = tmp_path/'out'; out.mkdir()
    m = run(out, reader='image_folder', root=str(own_data[0]), knn_label=None, epochs=1)
    assert m['data']['reader'] == 'image_folder' and m['data']['n_images'] == 24 and m['data']['classes'] is None
    assert m['knn_label'] is None and m['knn_pretrained'] is None and m['knn_random'] is None and m['knn_majority'] is None
    assert [h['knn'] for h in m['history']] == [None] and math.isfinite(m['effective_rank']) and m['export_ok']
    for f in ('data.png', 'loss.png', 'probe.png', 'spectrum.png', 'encoder.safetensors'): assert (out/f).stat().st_size > 0, f
    text = executed_text(out/'run_pretrain.ipynb')
    assert 'no kNN probe (knn_label=None)' in text and 'kNN probe skipped' in text

@needs_data
def test_runs_on_a_table_of_your_own(own_data, tmp_path):
    "A CSV of ODIR's paths and normal/abnormal labels goes in through reader image_table and its reader_kwargs; the probe uses its label."
    out = tmp_path/'out'; out.mkdir()
    m = run(out, reader='image_table', root=str(own_data[1]), reader_kwargs={'label_cols': ['label']}, knn_label='label', epochs=1)
    assert m['data']['reader'] == 'image_table' and m['data']['reader_kwargs'] == {'label_cols': ['label']} and m['data']['n_images'] == 24
    assert set(m['data']['classes']) == {'normal', 'abnormal'} and m['params']['reader_kwargs'] == {'label_cols': ['label']}
    for k in ('knn_pretrained', 'knn_random', 'knn_majority'): assert 0 <= m[k] <= 1, (k, m[k])

def test_dino_runs(tmp_path):
    "DINO through run_pretrain on the green channel: 1-channel multi-crop views, a small head, trained, exported (in_chans=1) and probed like the other methods."
    m = run(tmp_path, method='dino', dino_out_dim=64, dino_n_local=2, epochs=1, channels='green')
    assert m['method'] == 'dino' and m['export_ok'] and m['params']['dino_n_local'] == 2
    assert m['params']['channels'] == 'green' and json.loads((tmp_path/'run.json').read_text())['parameters']['channels'] == 'green'
    assert create_encoder(pretrained=m['encoder_file']).in_chans == 1
    assert all(math.isfinite(h['loss']) for h in m['history'])
