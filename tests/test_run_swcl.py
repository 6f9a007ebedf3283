"The main job end to end: papermill runs nbs/run_swcl.ipynb with smoke=True and tiny parameters; metrics.json holds the comparison."
import json, math
from pathlib import Path
import pytest

from experiments import run_experiment
TINY = dict(smoke=True, encoder='test_resnet', pseudo_encoder='test_resnet', n_synthetic=16, image_size=64, patch_size=32,
            epochs_probe=5, seg_crops=1, batch_pseudo=8, batch_pretrain=16, batch_downstream=8, valid_pct=0.3, seed=0)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('run_swcl')
    return run_experiment('run_swcl', out, **TINY)

def test_metrics_hold_the_comparison(run):
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['downstream']) == {'random', 'moco', 'supervised', 'swcl'}
    for init, r in m['downstream'].items():
        assert set(r) == {'seg_dice', 'auc_frozen', 'auc_finetuned'}, init
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in r.values()), (init, r)
    assert {'data', 'pseudo_labeler', 'patches', 'swcl', 'moco', 'supervised', 'downstream', 'total'} <= set(m['timings'])
    assert m['patches']['n'] > 0 and m['params']['smoke'] is True
    assert all(math.isfinite(v) for v in m['pretraining']['swcl'].values())

def test_outputs_written(run):
    for f in ('swcl_encoder.safetensors', 'moco_encoder.safetensors', 'supervised_encoder.safetensors', 'pseudo_labels.csv',
              'patches/patches.csv', 'data.png', 'cams.png', 'positives.png', 'losses.png', 'comparison.png'):
        assert (run/f).exists(), f
    nb = json.loads((run/'run_swcl.ipynb').read_text())
    summary = ''.join(''.join(o.get('data', {}).get('text/markdown', '')) for o in nb['cells'][-1]['outputs'])
    assert 'AUC, fine-tuned' in summary and 'vessel Dice' in summary
