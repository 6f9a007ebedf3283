"Heavier checks of fundus_ssl.transfer: grade, multi-label and joint tasks, repeatable fine-tuning, plain weight files."
import warnings
import numpy as np, pandas as pd, pytest, torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from fundus_ssl.transfer import (encoder_from, linear_probe, knn_probe, fine_tune, evaluate_classification,
                                 task_outputs, state_snapshot, check_unchanged)
from fundus_ssl.models import create_encoder, export_encoder
from fundus_ssl.synthetic import write_odir_like
from fundus_ssl.datasets import read_odir
from synthetic_sets import referable_eyepacs
from fundus_ssl.data import classification_dls, multilabel_dls

warnings.filterwarnings('ignore', category=UserWarning)
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def eyepacs(tmp_path_factory):
    return referable_eyepacs(tmp_path_factory.mktemp('eyepacs'), n_patients=40, seed=1)


def test_plain_weight_file_uses_arch(tmp_path):
    src = create_encoder('test_resnet')
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(tmp_path/'plain.safetensors'))
    enc = encoder_from(tmp_path/'plain.safetensors', arch='test_resnet')
    assert enc.load_report.ok
    torch.testing.assert_close(enc.state_dict(), src.state_dict())
    with pytest.raises(ValueError):  # strict load: a resnet18 is not filled by test_resnet weights
        encoder_from(tmp_path/'plain.safetensors', arch='resnet18')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        encoder_from(tmp_path/'nope.pth')


def test_bad_parameters_named_before_any_work(eyepacs, monkeypatch):
    "bs, epochs, k and the timm name are checked before a feature is computed (was a late, unnamed error)."
    import fundus_ssl.transfer as tr
    def no_features(*a, **k): raise AssertionError('features computed before the parameters were checked')
    monkeypatch.setattr(tr, 'frozen_features', no_features)
    dls, enc = classification_dls(eyepacs, 'referable', size=32, bs=8), create_encoder('test_resnet')
    for call, msg in [(lambda: linear_probe(enc, dls, bs=0), 'bs=0'), (lambda: linear_probe(enc, dls, bs=-8), 'bs=-8'),
                      (lambda: linear_probe(enc, dls, epochs=0), 'epochs=0'), (lambda: knn_probe(enc, dls, k=0), 'k=0'),
                      (lambda: fine_tune(enc, dls, epochs=0), 'epochs=0'), (lambda: fine_tune(enc, dls, freeze_epochs=-1), 'freeze_epochs=-1')]:
        with pytest.raises(ValueError, match=f'{msg}: expected a positive int'): call()
    with pytest.raises(ValueError, match="arch='resnet_nope': not a timm model name"): encoder_from('random', 'resnet_nope')


def test_grade_probe_same_for_exported_encoder(eyepacs, tmp_path):
    dls = classification_dls(eyepacs, 'dr_grade', size=64, bs=16, vocab=range(5))
    enc = create_encoder('test_resnet')
    export_encoder(enc, tmp_path/'e.safetensors')
    a = linear_probe(enc, dls, 'grade', epochs=30, seed=3)
    b = linear_probe(encoder_from(tmp_path/'e.safetensors'), dls, 'grade', epochs=30, seed=3)
    assert {'kappa', 'accuracy', 'auc', 'referable_auc', 'normal_auc'} <= set(a)
    for k in ('kappa', 'auc', 'referable_auc'): assert a[k] == pytest.approx(b[k])
    assert a['referable_auc'] > 0.7  # lesions make referable grades separable even on random features
    k = knn_probe(enc, dls, 'grade', k=5, ci=True, n_boot=100)
    assert k['accuracy_low'] <= k['accuracy'] <= k['accuracy_high']


def test_fine_tune_repeats_and_leaves_encoder(eyepacs):
    dls = classification_dls(eyepacs, 'referable', size=64, bs=16)
    enc = create_encoder('test_resnet')
    before = state_snapshot(enc)
    a = fine_tune(enc, dls, epochs=2, lr=1e-2, freeze_epochs=0, seed=5)
    b, learn = fine_tune(enc, dls, epochs=2, lr=1e-2, freeze_epochs=0, seed=5, return_learner=True)
    check_unchanged(enc, before)
    assert not any(r['frozen'] for r in a['history']) and len(a['history']) == 2
    assert [r['train_loss'] for r in a['history']] == pytest.approx([r['train_loss'] for r in b['history']])
    assert a['auc'] == pytest.approx(b['auc'])
    # the validation predictions behind the metrics are the learner's
    probs, targs = learn.get_preds()
    assert b['auc'] == pytest.approx(roc_auc_score(targs.numpy(), probs[:, 1].numpy()))
    # the model was trained: its encoder moved away from the caller's
    assert not torch.equal(learn.model.encoder.model.conv1[0].weight, enc.model.conv1[0].weight)


def test_multilabel_probe(tmp_path):
    df = read_odir(write_odir_like(tmp_path, n_patients=20, size=96))
    cols = [c for c in 'NDGCAHMO' if df[c].nunique() > 1]
    dls = multilabel_dls(df, cols, size=64, bs=16)
    assert task_outputs(dls) == ('multilabel', [len(cols)])
    res = linear_probe(create_encoder('test_resnet'), dls, epochs=20)
    assert {'auc', 'map', 'f1'} <= set(res) and 0 <= res['map'] <= 1
    with pytest.raises(ValueError, match='single-label'): knn_probe(create_encoder('test_resnet'), dls)


def test_sensitivity_at_specificity_by_hand():
    y = np.array([0] * 20 + [1] * 10)
    s = np.r_[np.linspace(0, 1, 20), np.linspace(0.5, 1.5, 10)]
    p = np.stack([1 - s / 2, s / 2], 1)
    m = evaluate_classification(p, y, 'binary', ci=False, specificity=0.85)
    # 85% specificity = 3 of 20 negatives above the threshold (scores 17/19, 18/19, 1): at threshold 17/19 = 0.895
    # the positives 0.5 + j/9 above it are j = 4..9, 6 of 10
    assert m['sensitivity_at_specificity'] == pytest.approx(0.6)
    assert m['auc'] == pytest.approx(roc_auc_score(y, s))
