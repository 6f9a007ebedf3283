"The main job end to end: papermill runs nbs/run_swcl.ipynb with smoke=True and tiny parameters; metrics.json holds the comparison."
import json, math
from pathlib import Path
import pytest

from experiments import run_experiment
TINY = dict(smoke=True, encoder='test_resnet', pseudo_encoder='test_resnet', n_synthetic=16, image_size=64, patch_size=32,
            epochs_probe=5, seg_crops=1, batch_pseudo=8, batch_pretrain=16, batch_downstream=8, valid_pct=0.3, seed=0,
            keep_checkpoints=True)  # kept for test_finished_run_resumed (the default deletes them)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('run_swcl')
    return run_experiment('run_swcl', out, **TINY)

def test_metrics_hold_the_comparison(run):
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['downstream']) == {'random', 'moco', 'supervised', 'swcl'}
    for init, r in m['downstream'].items():
        assert set(r) == {'seg_dice', 'auc_frozen', 'auc_finetuned'}, init
        for metric, v in r.items():  # every number with its 95% interval
            assert set(v) == {'value', 'low', 'high'} and all(math.isfinite(x) and 0 <= x <= 1 for x in v.values()), (init, metric, v)
            assert v['low'] <= v['value'] <= v['high'], (init, metric, v)
    assert {'data', 'pseudo_labeler', 'patches', 'swcl', 'moco', 'supervised', 'downstream', 'total'} <= set(m['timings'])
    assert m['patches']['n'] > 0 and m['params']['smoke'] is True
    for method in ('swcl', 'moco'):
        p = m['pretraining'][method]
        assert {'first_epoch_loss', 'last_epoch_loss', 'steps', 'epochs'} <= set(p) and p['steps'] > 0
        assert all(math.isfinite(p[k]) for k in ('first_epoch_loss', 'last_epoch_loss'))
    assert m['pretraining']['moco']['queue_prefilled'] is True

def test_stages_checked_against_the_ground_truth(run):
    "The generated data's exact labels and lesions check the pseudo-labeler's pool share and the patch scores."
    m = json.loads((run/'metrics.json').read_text())
    pool = m['pseudo_labeler']['pool_check']
    assert 0 <= pool['predicted_abnormal_share'] <= 1 and 0 < pool['true_abnormal_share'] < 1
    lesions = m['patches']['lesion_check']
    assert lesions['n'] == 5 * m['data']['unlabeled']['n_images'] and 0 < lesions['lesion_share'] < 1
    low, high = lesions['lesion_auc_ci']
    assert 0 <= low <= lesions['lesion_auc'] <= high <= 1
    assert m['data']['labeled']['n_valid'] >= 12 and m['data']['segmentation']['n_test'] == 4  # smoke: n_eval capped at 16

def test_training_log_names_its_columns(run):
    import pandas as pd
    logs = pd.read_csv(run/'logs.csv')
    assert {'stage', 'epoch', 'train_loss', 'valid_loss', 'time'} <= set(logs.columns)
    assert {'pseudo_labeler', 'swcl', 'moco'} <= set(logs['stage'])
    nb = json.loads((run/'run_swcl.ipynb').read_text())
    printed = ''.join(''.join(o.get('text', '')) for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))
    assert 'train_loss' in printed and "'00:" not in printed  # named columns, no bare lists like [0, 1.01, 0.61, 0.83, '01:49']
    assert 'downstream 4/4 swcl: done' in printed  # progress of the long stage

def test_history_csv(run):
    "history.csv: one row per epoch of every stage (smoke: 1 epoch each; fine-tuning 1 of the head + 1; the probe epochs_probe=5 passes)."
    import pandas as pd
    h = pd.read_csv(run/'history.csv')
    assert list(h.columns[:4]) == ['epoch', 'stage', 'train_loss', 'valid_loss'] and list(h.columns[-3:]) == ['lr', 'images_per_s', 'seconds']
    inits = ('random', 'moco', 'supervised', 'swcl')
    expected = dict(pseudo_labeler=1, swcl=1, moco=1, supervised=1, **{f'linear_probe {i}': TINY['epochs_probe'] for i in inits},
                    **{f'fine_tune {i}': 2 for i in inits}, **{f'segmentation {i}': 1 for i in inits})
    assert h.groupby('stage', sort=False)['epoch'].apply(list).to_dict() == {s: list(range(1, n + 1)) for s, n in expected.items()}
    fastai_fits = h[~h.stage.str.startswith('linear_probe')]
    assert fastai_fits[['train_loss', 'lr', 'images_per_s', 'seconds']].notna().all().all()
    assert h.loc[h.stage.str.startswith('linear_probe'), 'auc'].between(0, 1).all()

def test_outputs_written(run):
    for f in ('swcl_encoder.safetensors', 'moco_encoder.safetensors', 'supervised_encoder.safetensors', 'pseudo_labels.csv',
              'patches/patches.csv', 'data.png', 'cams.png', 'positives.png', 'losses.png', 'comparison.png', 'logs.csv'):
        assert (run/f).exists(), f
    nb = json.loads((run/'run_swcl.ipynb').read_text())
    summary = ''.join(''.join(o.get('data', {}).get('text/markdown', '')) for o in nb['cells'][-1]['outputs'])
    assert 'AUC, fine-tuned' in summary and 'vessel Dice' in summary
    assert 'largest difference to random init' in summary and 'pseudo-labeler calls' in summary and 'patch scores find' in summary
    assert "MoCo v2's loss, mean of the first and of the last epoch" in summary

# ---- runs that fail before any work, and an out_dir that is never written over unasked (fundus_ssl.runs)
from experiments import experiment_error, snapshot

def test_unknown_parameter_fails_at_once(tmp_path):
    err = experiment_error('run_swcl', tmp_path/'out', tmp_path/'run_swcl.ipynb', **TINY, label_schem='position')
    assert err.startswith('ParameterError: ') and "unknown parameter 'label_schem' (did you mean 'label_scheme'?)" in err
    assert 'label_scheme, multilabel' in err  # the valid names
    assert not (tmp_path/'out').exists()  # nothing read or written

def test_misspelled_values_fail_before_any_work(tmp_path):
    err = experiment_error('run_swcl', tmp_path/'out', tmp_path/'run_swcl.ipynb',
                           **dict(TINY, label_scheme='postion', precision='bf61', encoder='resnet_nope', multilabel='jacard'))
    for name in ("label_scheme='postion'", "precision='bf61'", "encoder='resnet_nope'", "multilabel='jacard'"): assert name in err, (name, err)
    assert "expected one of 'fp32', 'bf16', 'fp16'" in err and "(did you mean 'position'" in err
    assert not (tmp_path/'out').exists()

def test_bad_reader_kwargs_fail_before_any_work(tmp_path):
    err = experiment_error('run_swcl', tmp_path/'out', tmp_path/'run_swcl.ipynb',
                           **dict(TINY, unlabeled_reader='image_folder', unlabeled_root=str(tmp_path), unlabeled_reader_kwargs={'globb': '*.png'}))
    assert err.startswith('ParameterError: ') and "unlabeled_reader_kwargs ['globb'] of read_image_folder" in err, err
    assert not (tmp_path/'out').exists()

def test_existing_run_is_not_written_over(run, tmp_path):
    before = snapshot(run)
    assert {'pseudo_labels.csv', 'patches/patches.csv', 'metrics.json', 'run.json'} <= set(before)
    err = experiment_error('run_swcl', run, tmp_path/'other.ipynb', **dict(TINY, label_scheme='position'))
    assert err.startswith('OutDirError: ') and "label_scheme: 'all' in out_dir's run, 'position' now" in err
    err = experiment_error('run_swcl', run, tmp_path/'same.ipynb', **TINY)  # the same settings: resume or overwrite, say which
    assert 'same settings. Pass resume=True to continue it, pass overwrite=True' in err
    assert snapshot(run) == before

def test_finished_run_resumed(run, tmp_path):
    import pandas as pd
    "The same settings with resume=True continue the run: recorded in run.json, SWCL's losses those of its checkpoint, strict JSON."
    # last in this file: it rewrites the run's results (in place: a copied folder's patch paths would point to the original)
    before = json.loads((run/'metrics.json').read_text())
    history_before = pd.read_csv(run/'history.csv')
    run_experiment('run_swcl', run, tmp_path/'resumed.ipynb', **TINY, resume=True)
    m = json.loads((run/'metrics.json').read_text(), parse_constant=lambda c: pytest.fail(f'metrics.json holds {c}'))
    assert len(json.loads((run/'run.json').read_text())['resumed']) == 1
    assert m['pretraining'] == before['pretraining'] and m['pretraining']['swcl']['steps'] > 0  # not NaN over 0 steps
    # history.csv: SWCL's and MoCo's checkpointed epochs kept as they were, the retrained stages replaced: one row per epoch still
    h = pd.read_csv(run/'history.csv')
    assert sorted(zip(h.stage, h.epoch)) == sorted(zip(history_before.stage, history_before.epoch))
    for s in ('swcl', 'moco'): pd.testing.assert_frame_equal(h[h.stage == s].reset_index(drop=True), history_before[history_before.stage == s].reset_index(drop=True))

# ---- your own data (issue 15): the pool a plain folder of images without labels, the labeled set a CSV of paths and labels
import os
import pandas as pd

FUNDUS_DATA = os.environ.get('FUNDUS_DATA')

from own_data import flat_folder, odir_table

@pytest.mark.skipif(not FUNDUS_DATA, reason='FUNDUS_DATA is unset (the real datasets)')
def test_runs_on_your_own_folder_and_table(tmp_path):
    "Pool: a flat folder of EyeDiseases4class images (image_folder, no labels); labeled set: a CSV of ODIR paths and normal/abnormal labels."
    out = tmp_path/'out'; out.mkdir()
    pool, table = flat_folder(tmp_path/'flat'), odir_table(tmp_path/'odir.csv')
    run_experiment('run_swcl', out, **dict(TINY, keep_checkpoints=False, unlabeled_reader='image_folder', unlabeled_root=str(pool),
                                            labeled_reader='image_table', labeled_root=str(table), labeled_reader_kwargs={'label_cols': ['label']}))
    m = json.loads((out/'metrics.json').read_text())
    assert m['data']['unlabeled'] == dict(reader='image_folder', reader_kwargs={}, n_images=24)
    assert m['data']['labeled']['reader'] == 'image_table' and m['data']['labeled']['reader_kwargs'] == {'label_cols': ['label']}
    assert m['data']['labeled']['n_images'] == 24 and m['data']['labeled']['n_abnormal'] == 12 and m['data']['labeled']['n_valid'] > 0
    assert m['pseudo_labeler']['pool_check']['true_abnormal_share'] is None and m['patches']['lesion_check'] is None  # no ground truth
    assert m['patches']['n'] == 5 * (24 + m['data']['labeled']['n_images'] - m['data']['labeled']['n_valid'])
    for init, r in m['downstream'].items():
        for metric, v in r.items(): assert 0 <= v['value'] <= 1, (init, metric, v)
    assert len(pd.read_csv(out/'pseudo_labels.csv')) == 24 and not (out/'checkpoints').exists()
